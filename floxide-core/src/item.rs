//! Work items: one pending node execution of a run.

use std::fmt::{self, Debug};
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The identity of a work item within its run.
///
/// Successor ids are derived from their parent's id and their position
/// ([`ItemId::child`]), so re-executing a step produces the same successor ids: a backend can
/// recognise a re-delivered step's successors instead of enqueuing them twice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemId(u128);

impl ItemId {
    /// The id of a run's first work item.
    pub const ROOT: ItemId = ItemId(1);

    /// An id from its raw value.
    pub const fn from_u128(raw: u128) -> Self {
        ItemId(raw)
    }

    /// The raw value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id of the `index`-th successor emitted by the step of this item: a 128-bit mix of
    /// both, the same every time.
    pub fn child(self, index: u32) -> ItemId {
        let hi = (self.0 >> 64) as u64;
        let lo = self.0 as u64;
        let i = u64::from(index);
        let a = mix(lo ^ mix(hi ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let b = mix(hi ^ mix(a ^ lo ^ i.wrapping_add(0xD1B5_4A32_D192_ED03)));
        ItemId((u128::from(b) << 64) | u128::from(a))
    }
}

/// SplitMix64's finaliser: a bijective, well-distributed 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ItemId {
    /// The id's 32 lowercase hex digits, as [`Display`](fmt::Display) writes them (made by
    /// hand: the formatter's `{:032x}` for a `u128` costs ~10x as much, and every commit
    /// names its items).
    fn hex_digits(self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = DIGITS[((self.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.hex_digits();
        f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

impl Debug for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemId({:032x})", self.0)
    }
}

/// The text is not 1 to 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid work item id `{0}`: expected 1 to 32 hex digits")]
pub struct ParseItemIdError(String);

impl FromStr for ItemId {
    type Err = ParseItemIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 32 {
            return Err(ParseItemIdError(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(ItemId)
            .map_err(|_| ParseItemIdError(s.to_owned()))
    }
}

impl Serialize for ItemId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ItemId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            text.parse().map_err(de::Error::custom)
        } else {
            u128::deserialize(d).map(ItemId)
        }
    }
}

/// The work-item enum that `workflow!` generates: one variant per node, holding the item's
/// id and the node's input.
pub trait WorkItem:
    Debug + fmt::Display + Clone + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// The item's id within its run.
    fn instance_id(&self) -> ItemId;
    /// The name of the node that will execute this item (its field name in the workflow).
    fn node_name(&self) -> &'static str;
    /// Whether this item's node may end the run: its `edges` entry is terminal (`n => [];`) or
    /// has a terminal arm.
    fn is_terminal(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::ItemId;

    #[test]
    fn an_item_id_shows_as_32_lowercase_hex_digits() {
        let ids = [
            ItemId::ROOT,
            ItemId::from_u128(0),
            ItemId::from_u128(u128::MAX),
            ItemId::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            ItemId::ROOT.child(3).child(7),
        ];
        for id in ids {
            let shown = id.to_string();
            assert_eq!(shown, format!("{:032x}", id.as_u128()));
            assert_eq!(shown.parse::<ItemId>(), Ok(id));
        }
        assert_eq!(ItemId::ROOT.to_string(), "00000000000000000000000000000001");
    }
}
