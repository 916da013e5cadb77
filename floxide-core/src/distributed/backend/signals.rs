//! [`RunSignals`]: per-run change notifications, for backends that can tell which runs a
//! change concerns.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::RunWatch;
use crate::distributed::RunId;

/// Per-run change signals: a waiter on one run ([`AdminBackend::watch_run`]) is woken by that
/// run's changes only, so a process with many waiters does not wake them all on every
/// change. A channel exists per watched run, and goes once nobody listens.
///
/// ```
/// use floxide_core::distributed::RunSignals;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let signals = RunSignals::default();
/// let mut watch = signals.watch("run-1");
/// signals.changed("run-2"); // another run: no wake-up
/// signals.changed("run-1");
/// watch.changed(std::time::Duration::from_secs(1)).await; // returns at once
/// # }
/// ```
///
/// [`AdminBackend::watch_run`]: super::AdminBackend::watch_run
#[derive(Default)]
pub struct RunSignals {
    senders: Mutex<Senders>,
}

#[derive(Default)]
struct Senders {
    by_run: HashMap<RunId, watch::Sender<u64>, foldhash::fast::RandomState>,
    /// The size at which subscribing next drops the senders nobody listens to.
    sweep_at: usize,
}

impl std::fmt::Debug for RunSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSignals").finish_non_exhaustive()
    }
}

impl RunSignals {
    fn senders(&self) -> std::sync::MutexGuard<'_, Senders> {
        // Every update is a single map operation: a poisoned lock's state is consistent.
        self.senders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A subscription to `run`'s changes from now on.
    pub fn subscribe(&self, run: &str) -> watch::Receiver<u64> {
        let mut s = self.senders();
        if let Some(tx) = s.by_run.get(run) {
            return tx.subscribe();
        }
        // Senders whose waiters are gone (their run changed no more) go in bulk, at sizes
        // that double: a constant amortized cost per subscription.
        if s.by_run.len() >= s.sweep_at {
            s.by_run.retain(|_, tx| tx.receiver_count() > 0);
            s.sweep_at = (2 * s.by_run.len()).max(64);
        }
        let (tx, rx) = watch::channel(0);
        s.by_run.insert(run.to_owned(), tx);
        rx
    }

    /// [`subscribe`](Self::subscribe), as a [`RunWatch`].
    pub fn watch(&self, run: &str) -> RunWatch {
        RunWatch::new(self.subscribe(run))
    }

    /// Wakes the subscribers of `run` (a sender nobody listens to any more goes).
    pub fn changed(&self, run: &str) {
        let mut s = self.senders();
        if let Some(tx) = s.by_run.get(run) {
            if tx.receiver_count() == 0 {
                s.by_run.remove(run);
            } else {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Wakes every subscriber (changes may have been missed, e.g. after a reconnection).
    pub fn changed_all(&self) {
        let mut s = self.senders();
        s.by_run.retain(|_, tx| tx.receiver_count() > 0);
        for tx in s.by_run.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}
