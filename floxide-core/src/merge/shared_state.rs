//! [`SharedState`]: a value that nodes of one run can read and change.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{self, Serialize, Serializer};
use tokio::sync::{Mutex, MutexGuard};

use super::{sole_owner, Merge};

/// A value behind an async mutex, shared by the clones of a context.
///
/// Nodes see the context by shared reference; `SharedState` lets them change part of it:
/// `*ctx.counter.get().await += 1`. Every method that waits for the lock is `async`, so
/// nothing here blocks a runtime thread or panics inside async code.
///
/// Serializing takes the lock without waiting: serializing while a node holds the guard is
/// an error (never a panic or a torn value). Merging joins the inner values with their own
/// [`Merge`].
pub struct SharedState<T> {
    inner: Arc<Mutex<T>>,
}

impl<T> SharedState<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        SharedState {
            inner: Arc::new(Mutex::new(value)),
        }
    }

    /// Locks the value; the guard reads and writes it.
    pub async fn get(&self) -> MutexGuard<'_, T> {
        self.inner.lock().await
    }

    /// Replaces the value.
    pub async fn set(&self, value: T) {
        *self.inner.lock().await = value;
    }

    /// Changes the value with `f` under the lock and returns what `f` returns.
    pub async fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut *self.inner.lock().await)
    }

    /// A copy of the value.
    pub async fn snapshot(&self) -> T
    where
        T: Clone,
    {
        self.inner.lock().await.clone()
    }

    /// The guard if the value is not locked right now.
    pub fn try_get(&self) -> Option<MutexGuard<'_, T>> {
        self.inner.try_lock().ok()
    }
}

impl<T: Default> Default for SharedState<T> {
    fn default() -> Self {
        SharedState::new(T::default())
    }
}

/// Clones share the value (like `Arc`).
impl<T> Clone for SharedState<T> {
    fn clone(&self) -> Self {
        SharedState {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for SharedState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.try_lock() {
            Ok(value) => f.debug_tuple("SharedState").field(&*value).finish(),
            Err(_) => f.write_str("SharedState(<locked>)"),
        }
    }
}

impl<T: Serialize> Serialize for SharedState<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.inner.try_lock() {
            Ok(value) => value.serialize(s),
            Err(_) => Err(ser::Error::custom(
                "SharedState is locked by a running node; serialize the context after the \
                 node has dropped the guard returned by `get()`",
            )),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SharedState<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(SharedState::new)
    }
}

/// Joins the inner values. Merging is done on private copies (a worker's deserialized
/// context), where the locks are free; should `self` be locked, the merge waits for it by
/// yielding the thread.
impl<T: Merge + Clone> Merge for SharedState<T> {
    fn merge(&mut self, mut other: Self) {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return;
        }
        let theirs = match sole_owner(&mut other.inner) {
            Some(m) => std::mem::take(m.get_mut()),
            None => loop {
                if let Ok(v) = other.inner.try_lock() {
                    break v.clone();
                }
                std::thread::yield_now();
            },
        };
        if let Some(m) = sole_owner(&mut self.inner) {
            m.get_mut().merge(theirs);
            return;
        }
        loop {
            if let Ok(mut mine) = self.inner.try_lock() {
                mine.merge(theirs);
                return;
            }
            std::thread::yield_now();
        }
    }
}
