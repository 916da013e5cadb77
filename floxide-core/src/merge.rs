//! Joining concurrent changes to a context: [`Merge`] and the provided mergeable types.
//!
//! In a distributed run, steps of one run may execute at the same time on different workers,
//! each on its own copy of the context. Their changes are combined with [`Merge::merge`], which
//! must be a *join*: commutative, associative and idempotent. Then the result does not depend
//! on the order in which steps commit, nor on a commit being applied twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

/// Combines another copy of a value into this one.
///
/// Contract: `merge` is a join. For all `a`, `b`, `c`:
/// `a ⊔ b == b ⊔ a`, `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)` and `a ⊔ a == a`.
///
/// Derive it for a struct of mergeable fields with `#[derive(Merge)]`: each field is merged
/// with its own `Merge`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `Merge`",
    label = "this type has no join to combine concurrent changes",
    note = "wrap the field in `Fixed<..>` (set once), `EventLog<..>` (append-only) or \
            `SharedState<..>`, use a set or map, or implement `Merge` yourself as a join"
)]
pub trait Merge: Default {
    /// Folds `other` into `self`.
    fn merge(&mut self, other: Self);
}

impl Merge for () {
    fn merge(&mut self, _other: Self) {}
}

/// `None` is the bottom; two values merge with their own join.
impl<T: Merge> Merge for Option<T> {
    fn merge(&mut self, other: Self) {
        match (self.as_mut(), other) {
            (_, None) => {}
            (None, Some(o)) => *self = Some(o),
            (Some(s), Some(o)) => s.merge(o),
        }
    }
}

/// Set union.
impl<T: Ord> Merge for BTreeSet<T> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

/// Set union.
impl<T: Eq + Hash> Merge for HashSet<T> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

/// Key union; values under the same key merge with their own join.
impl<K: Ord, V: Merge> Merge for BTreeMap<K, V> {
    fn merge(&mut self, other: Self) {
        for (k, v) in other {
            self.entry(k).or_default().merge(v);
        }
    }
}

/// Key union; values under the same key merge with their own join.
impl<K: Eq + Hash, V: Merge> Merge for HashMap<K, V> {
    fn merge(&mut self, other: Self) {
        for (k, v) in other {
            self.entry(k).or_default().merge(v);
        }
    }
}

/// A value set once (typically when the run starts) and never changed afterwards.
///
/// Merging two copies keeps the set one: the default value is the bottom. Should two copies
/// ever hold different non-default values, the merge still picks one deterministically (the
/// greater by their JSON form), so the result does not depend on commit order. Values whose
/// JSON forms coincide or cannot be produced (NaN and infinities, maps with non-string keys)
/// are the exception: for them a conflict keeps the value merged into.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fixed<T>(T);

impl<T> Fixed<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Fixed(value)
    }

    /// The value.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Fixed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Fixed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fixed").field(&self.0).finish()
    }
}

impl<T: Serialize> Serialize for Fixed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Fixed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Fixed)
    }
}

impl<T: Default + PartialEq + Serialize> Merge for Fixed<T> {
    fn merge(&mut self, other: Self) {
        if self.0 == other.0 || other.0 == T::default() {
            return;
        }
        if self.0 == T::default() {
            *self = other;
            return;
        }
        // Two different set values: a conflict the type cannot resolve. Pick the greater
        // serialized form so that every order of merges agrees.
        let mine = serde_json::to_vec(&self.0).unwrap_or_default();
        let theirs = serde_json::to_vec(&other.0).unwrap_or_default();
        if theirs > mine {
            *self = other;
        }
    }
}

mod event_log;
mod shared_state;

pub use event_log::{EventId, EventLog, LoggedEvent};
pub use shared_state::SharedState;

/// Shared by the interior-mutable types: the value behind an `Arc` when this is its only
/// owner, which lets `merge` work without locking.
fn sole_owner<T>(arc: &mut Arc<T>) -> Option<&mut T> {
    Arc::get_mut(arc)
}
