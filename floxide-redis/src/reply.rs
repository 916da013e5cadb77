//! Reading script replies and stored records.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floxide_core::distributed::DistributedError;
use redis::Value;

pub(crate) fn backend(e: redis::RedisError) -> DistributedError {
    DistributedError::Backend(e.to_string())
}

pub(crate) fn malformed(what: &str) -> DistributedError {
    DistributedError::Backend(format!("unexpected reply from Redis: {what}"))
}

/// A script's reply: an array of values.
pub(crate) struct Reply(pub(crate) Vec<Value>);

impl Reply {
    pub(crate) fn from(value: Value) -> Result<Self, DistributedError> {
        match value {
            Value::Array(items) => Ok(Reply(items)),
            other => Err(malformed(&format!("expected an array, got {other:?}"))),
        }
    }

    pub(crate) fn bytes(&self, i: usize) -> Vec<u8> {
        bytes_at(&self.0, i)
    }

    pub(crate) fn text(&self, i: usize) -> String {
        text_at(&self.0, i)
    }

    pub(crate) fn int(&self, i: usize) -> Option<i64> {
        int_at(&self.0, i)
    }
}

/// Value `i` of `values` as bytes (empty when missing or not a string or number).
pub(crate) fn bytes_at(values: &[Value], i: usize) -> Vec<u8> {
    raw_at(values, i).into_owned()
}

/// Value `i` of `values` as bytes, borrowed from the reply when it holds them (see
/// [`bytes_at`]).
fn raw_at(values: &[Value], i: usize) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    match values.get(i) {
        Some(Value::BulkString(b)) => Cow::Borrowed(b),
        Some(Value::SimpleString(s)) => Cow::Borrowed(s.as_bytes()),
        Some(Value::Int(n)) => Cow::Owned(n.to_string().into_bytes()),
        _ => Cow::Borrowed(&[]),
    }
}

/// Value `i` of `values` as text (see [`bytes_at`]).
pub(crate) fn text_at(values: &[Value], i: usize) -> String {
    String::from_utf8_lossy(&raw_at(values, i)).into_owned()
}

/// Value `i` of `values` as borrowed text, when it is a string of UTF-8 (to compare a reply's
/// word without copying it).
pub(crate) fn str_at(values: &[Value], i: usize) -> Option<&str> {
    match values.get(i) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok(),
        Some(Value::SimpleString(s)) => Some(s),
        _ => None,
    }
}

/// Value `i` of `values` as a number, when it is one.
pub(crate) fn int_at(values: &[Value], i: usize) -> Option<i64> {
    match values.get(i) {
        Some(Value::Int(n)) => Some(*n),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A hash as field → bytes.
pub(crate) fn hash(value: Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => Vec::new(),
    };
    for (k, v) in pairs {
        let key = match k {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::SimpleString(s) => s,
            _ => continue,
        };
        let val = match v {
            Value::BulkString(b) => b,
            Value::SimpleString(s) => s.into_bytes(),
            Value::Int(n) => n.to_string().into_bytes(),
            _ => continue,
        };
        out.insert(key, val);
    }
    out
}

pub(crate) fn time_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn ms_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::{str_at, text_at};

    #[test]
    fn reply_values_read_as_text_owned_or_borrowed() {
        let values = [
            Value::BulkString(b"ok".to_vec()),
            Value::SimpleString("again".to_owned()),
            Value::Int(42),
            Value::BulkString(vec![0xff, b'a']),
            Value::Nil,
        ];
        assert_eq!(text_at(&values, 0), "ok");
        assert_eq!(text_at(&values, 1), "again");
        assert_eq!(text_at(&values, 2), "42");
        assert_eq!(text_at(&values, 3), "\u{fffd}a");
        assert_eq!(text_at(&values, 4), "");
        assert_eq!(text_at(&values, 9), "");
        assert_eq!(str_at(&values, 0), Some("ok"));
        assert_eq!(str_at(&values, 1), Some("again"));
        assert_eq!(str_at(&values, 2), None, "a number is not borrowed text");
        assert_eq!(str_at(&values, 3), None, "not UTF-8");
        assert_eq!(str_at(&values, 4), None);
    }
}
