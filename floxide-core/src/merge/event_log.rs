//! [`EventLog`]: an append-only log whose merge is a union.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

use super::{sole_owner, Merge};

/// The identity of one appended event: random, so that events appended concurrently on
/// different workers never collide.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    fn random() -> Self {
        EventId(fastrand::u128(..))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({:032x})", self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            u128::from_str_radix(&text, 16).map(EventId).map_err(|_| {
                de::Error::custom(format!("invalid event id `{text}`: expected 32 hex digits"))
            })
        } else {
            u128::deserialize(d).map(EventId)
        }
    }
}

/// One event of an [`EventLog`] with its identity and logical time (see [`EventLog::iter`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoggedEvent<E> {
    /// Logical time: one more than the greatest `seq` the log held when the event was
    /// appended. Orders causally related events without reading any clock.
    pub seq: u64,
    /// The event's identity (random; merges keep one copy per id).
    pub id: EventId,
    /// The event.
    pub event: E,
}

type Entry<E> = LoggedEvent<E>;

/// An append-only log of events, shared by the clones of a context.
///
/// `append` takes `&self`, so nodes (which see the context by shared reference) can record
/// events. Clones share the same log, like the contexts that contain them.
///
/// Merging two logs is the union of their events by [`EventId`]. The order is deterministic
/// and independent of wall clocks: by logical time (an event appended after another was seen
/// comes after it), then by id. Events appended concurrently on different workers therefore
/// land in the same order on every worker.
pub struct EventLog<E> {
    inner: Arc<Mutex<Vec<Entry<E>>>>,
}

impl<E> EventLog<E> {
    /// An empty log.
    pub fn new() -> Self {
        EventLog {
            inner: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry<E>>> {
        // A panic while the lock was held cannot leave the vector half-updated (every update
        // is a single push or a replace), so a poisoned lock is safe to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `event` after every event this log holds now.
    pub fn append(&self, event: E) {
        self.append_with_id(event);
    }

    /// Appends `event` like [`append`](Self::append) and returns its id.
    pub fn append_with_id(&self, event: E) -> EventId {
        let mut entries = self.entries();
        let seq = entries.last().map_or(1, |e| e.seq + 1);
        let id = EventId::random();
        entries.push(Entry { seq, id, event });
        id
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether the log holds no event.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// A snapshot of the events with their ids and logical times, in log order (the
    /// Floxide 3.x signature; [`events`](Self::events) iterates over the events alone).
    pub fn iter(&self) -> Vec<LoggedEvent<E>>
    where
        E: Clone,
    {
        self.entries().clone()
    }

    /// A snapshot of the events, in log order.
    pub fn events(&self) -> std::vec::IntoIter<E>
    where
        E: Clone,
    {
        let snapshot: Vec<E> = self.entries().iter().map(|e| e.event.clone()).collect();
        snapshot.into_iter()
    }

    /// A snapshot of the events with their ids, in log order.
    pub fn iter_with_ids(&self) -> std::vec::IntoIter<(EventId, E)>
    where
        E: Clone,
    {
        let snapshot: Vec<(EventId, E)> = self
            .entries()
            .iter()
            .map(|e| (e.id, e.event.clone()))
            .collect();
        snapshot.into_iter()
    }

    /// Applies every event, in log order, to `state` with `apply`.
    ///
    /// The log is not locked while `apply` runs (it sees a snapshot), so `apply` may read or
    /// append to this log.
    pub fn apply_all<S, F>(&self, state: &mut S, mut apply: F)
    where
        F: FnMut(&E, &mut S),
        E: Clone,
    {
        for event in self.events() {
            apply(&event, state);
        }
    }

    /// Applies every event, in log order, to `S::default()` with `apply`, and returns it.
    pub fn apply_all_default<S, F>(&self, apply: F) -> S
    where
        S: Default,
        F: FnMut(&E, &mut S),
        E: Clone,
    {
        let mut state = S::default();
        self.apply_all(&mut state, apply);
        state
    }

    /// Folds the events, in log order, into `initial` with `f`.
    pub fn fold<S, F>(&self, initial: S, mut f: F) -> S
    where
        F: FnMut(S, &E) -> S,
    {
        self.entries()
            .iter()
            .fold(initial, |state, entry| f(state, &entry.event))
    }

    /// A copy that shares nothing with this log.
    pub fn deep_clone(&self) -> Self
    where
        E: Clone,
    {
        EventLog {
            inner: Arc::new(Mutex::new(self.entries().clone())),
        }
    }
}

impl<E> Default for EventLog<E> {
    fn default() -> Self {
        EventLog::new()
    }
}

/// Clones share the log (like `Arc`); see [`EventLog::deep_clone`] for an independent copy.
impl<E> Clone for EventLog<E> {
    fn clone(&self) -> Self {
        EventLog {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for EventLog<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries().iter().map(|e| &e.event))
            .finish()
    }
}

/// Two logs are equal when they hold the same events in the same order.
impl<E: PartialEq> PartialEq for EventLog<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || *self.entries() == *other.entries()
    }
}

impl<E: Clone> Merge for EventLog<E> {
    fn merge(&mut self, mut other: Self) {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return;
        }
        let theirs: Vec<Entry<E>> = match sole_owner(&mut other.inner) {
            Some(m) => std::mem::take(m.get_mut().unwrap_or_else(PoisonError::into_inner)),
            None => other.entries().clone(),
        };
        if theirs.is_empty() {
            return;
        }
        let mut mine = self.entries();
        let ours = std::mem::take(&mut *mine);
        *mine = union(ours, theirs);
    }
}

/// Merges two logs sorted by `(seq, id)` into one, dropping duplicate ids.
fn union<E>(a: Vec<Entry<E>>, b: Vec<Entry<E>>) -> Vec<Entry<E>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => (x.seq, x.id) <= (y.seq, y.id),
        };
        let next = if take_a { a.next() } else { b.next() };
        if let Some(entry) = next {
            let dup = out
                .last()
                .is_some_and(|last: &Entry<E>| last.id == entry.id && last.seq == entry.seq);
            if !dup {
                out.push(entry);
            }
        }
    }
    out
}

impl<E: serde::Serialize> Serialize for EventLog<E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(s)
    }
}

impl<'de, E: serde::Deserialize<'de>> Deserialize<'de> for EventLog<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut entries = Vec::<Entry<E>>::deserialize(d)?;
        // Stored logs are sorted; re-sort anyway so that a hand-edited log keeps the order.
        entries.sort_by_key(|e| (e.seq, e.id));
        entries.dedup_by(|x, y| x.id == y.id && x.seq == y.seq);
        Ok(EventLog {
            inner: Arc::new(Mutex::new(entries)),
        })
    }
}
