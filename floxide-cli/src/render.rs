//! Text for people: aligned tables, times, durations and shortened values.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters (newlines in payloads) become spaces.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    /// Two spaces between columns, no padding after the last one.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers = self.headers.iter().map(|h| h.to_string());
        for cells in std::iter::once(headers.collect::<Vec<_>>()).chain(self.rows.iter().cloned()) {
            let last = cells.len() - 1;
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Label/value lines, labels aligned.
#[derive(Debug, Default)]
pub struct Fields(Vec<(&'static str, String)>);

impl Fields {
    pub fn add(&mut self, label: &'static str, value: impl Into<String>) {
        self.0.push((label, one_line(&value.into())));
    }

    pub fn render(&self) -> String {
        let width = self.0.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        self.0
            .iter()
            .map(|(label, value)| format!("{label:<width$}  {value}\n"))
            .collect()
    }
}

/// The text on one line: control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` characters, the cut marked with `…`.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// `-` for a missing value.
pub fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// RFC 3339 in UTC with milliseconds, for JSON: `2026-03-01T12:00:00.250Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(printable(time)).to_string()
}

/// A time for tables: `2026-03-01 12:00:00` (UTC).
pub fn timestamp(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(printable(time)).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// `time` within the years 1970 to 9999 that RFC 3339 text covers (a backend's odd clock
/// value must not stop a listing).
fn printable(time: SystemTime) -> SystemTime {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    time.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST)
}

/// A time for tables with how long ago (or how far ahead) it is: `… (3s ago)`, `… (in 20s)`.
pub fn timestamp_relative(time: SystemTime, now: SystemTime) -> String {
    let relative = match now.duration_since(time) {
        Ok(ago) => format!("{} ago", duration(ago)),
        Err(ahead) => format!("in {}", duration(ahead.duration())),
    };
    format!("{} ({relative})", timestamp(time))
}

/// `120µs`, `4.5ms`, `850ms`, `12.3s`, `4m 05s`, `2h 07m`, `3d 04h`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 if d < Duration::from_millis(1) => format!("{}µs", d.as_micros()),
        0 if d < Duration::from_millis(10) => format!("{:.1}ms", d.as_secs_f64() * 1000.0),
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_250); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.250Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14 22:13:20"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100)),
            "9999-12-31 23:59:59"
        );
        assert_eq!(
            timestamp_relative(t, t + Duration::from_secs(3)),
            "2000-02-29 00:00:00 (3.0s ago)"
        );
        assert_eq!(
            timestamp_relative(t + Duration::from_secs(90), t),
            "2000-02-29 00:01:30 (in 1m 30s)"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_micros(120)), "120µs");
        assert_eq!(duration(Duration::from_micros(4_520)), "4.5ms");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(duration(Duration::from_secs(7620)), "2h 07m");
        assert_eq!(
            duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d 04h"
        );
    }

    #[test]
    fn tables_align_and_stay_on_one_line() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["first\nline".into(), "x".into()]);
        t.row(vec!["b".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "A           LONGER\nfirst line  x\nb           y\n"
        );
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
