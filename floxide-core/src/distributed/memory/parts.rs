//! The parts of the in-memory backend: one store type per concern, each with its own lock.
//!
//! Every store is a cheap handle (`Arc`) to its part. An [`InMemoryBackend`] is a set of
//! seven parts; operations that touch several parts lock them in one fixed order
//! (runs → items → queue → contexts → metrics → errors → liveness), so a multi-part
//! transition is atomic to every observer and locks never deadlock.
//!
//! [`InMemoryBackend`]: super::InMemoryBackend

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::distributed::{
    DeadLetter, RunId, RunInfo, RunMetrics, StepEvent, StepEventKind, WorkItemStatus, WorkerHealth,
    WorkerId, WorkflowError,
};
use crate::ItemId;

/// The maps of the in-memory backend, keyed by run, item and workflow: every take and commit
/// looks several of them up, and SipHash (the standard one) was ~5% of a step.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// `f` applied to `map`'s value at `key`, a default one inserted first when there is none.
/// Unlike `entry(key.to_owned())`, it allocates no key when the value exists (the common case:
/// a run's records are made when it starts).
pub(crate) fn slot<V: Default, R>(
    map: &mut HashMap<RunId, V>,
    key: &str,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    if let Some(value) = map.get_mut(key) {
        return f(value);
    }
    f(map.entry(key.to_owned()).or_default())
}

/// Locks `m`; the state behind every lock here is updated by plain assignments that cannot
/// be left half-done, so a lock poisoned by a panicking thread is still consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

macro_rules! part {
    ($(#[$doc:meta])* $name:ident, $state:ty) => {
        $(#[$doc])*
        #[derive(Clone, Default)]
        pub(crate) struct $name {
            pub(crate) part: Arc<Part<$state>>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            pub(crate) fn lock(&self) -> MutexGuard<'_, $state> {
                lock(&self.part.state)
            }
        }
    };
}

/// A part's state and the notifications raised when it changes.
pub(crate) struct Part<S> {
    pub(crate) state: Mutex<S>,
    pub(crate) changed: Notify,
    /// Bumped on every change, for subscribers that must not miss one.
    pub(crate) version: tokio::sync::watch::Sender<u64>,
}

impl<S: Default> Default for Part<S> {
    fn default() -> Self {
        Part {
            state: Mutex::default(),
            changed: Notify::new(),
            version: tokio::sync::watch::channel(0).0,
        }
    }
}

part!(
    /// Run records and idempotency keys (in memory).
    RunsPart,
    RunsState
);
part!(
    /// The state of every work item of every run (in memory).
    ItemsPart,
    ItemsState
);
part!(
    /// The ready, delayed and leased queues and the dead-letter list (in memory).
    QueuePart,
    QueueState
);
part!(
    /// Run contexts with their versions, as serialized bytes (in memory).
    ContextsPart,
    ContextsState
);
part!(
    /// Per-run counters (in memory).
    MetricsPart,
    MetricsState
);
part!(
    /// Per-run failure records (in memory).
    ErrorsPart,
    ErrorsState
);
part!(
    /// What processes report about themselves (in memory): worker health and the graphs of
    /// their workflows.
    LivenessPart,
    LivenessState
);

#[derive(Default)]
pub(crate) struct RunsState {
    pub(crate) runs: HashMap<RunId, RunInfo>,
    /// Start order, for listing: sequence number → run.
    pub(crate) order: BTreeMap<u64, RunId>,
    /// Each run's sequence number in `order`.
    pub(crate) seq_of: HashMap<RunId, u64>,
    pub(crate) next_seq: u64,
    pub(crate) keys: HashMap<String, RunId>,
    /// Finished runs in finish order, for their retention (a run resumed and finished again
    /// is listed again; the entry that no longer matches its finish is skipped).
    pub(crate) finished: VecDeque<(Instant, RunId)>,
    /// When each finished run finished.
    pub(crate) finished_at: HashMap<RunId, Instant>,
    /// Each run's input (its first item's bytes).
    pub(crate) inputs: HashMap<RunId, Arc<[u8]>>,
}

/// A stored work item.
pub(crate) struct ItemRecord {
    /// Its node, shared with the run's step history.
    pub(crate) node: Arc<str>,
    pub(crate) bytes: Arc<[u8]>,
    pub(crate) status: WorkItemStatus,
    pub(crate) attempt: u32,
    pub(crate) deliveries: u32,
    /// Token, holder and expiry of the current lease (the holder is shared with the step
    /// history).
    pub(crate) lease: Option<(u64, Arc<str>, Instant)>,
}

#[derive(Default)]
pub(crate) struct RunItems {
    pub(crate) items: HashMap<ItemId, ItemRecord>,
    /// Items not yet Completed, PermanentlyFailed or Cancelled.
    pub(crate) outstanding: usize,
    /// Ready items of a paused or failed run, held until a resume.
    pub(crate) parked: VecDeque<ItemId>,
}

#[derive(Default)]
pub(crate) struct ItemsState {
    pub(crate) runs: HashMap<RunId, RunItems>,
}

/// An entry of the ready queue: the item and its run (or a resume marker: the run and
/// [`RESUME_MARKER`]).
pub(crate) type Entry = (RunId, ItemId);

/// The item id of a resume marker: a take that meets it moves the run's parked items back to
/// the queue, a slice at a time (no item has this id: ids are 1 or derived hashes).
pub(crate) const RESUME_MARKER: ItemId = ItemId::from_u128(0);

/// An entry of a timed heap: (due, sequence or lease token, workflow, run, item).
pub(crate) type Timed = Reverse<(Instant, u64, String, RunId, ItemId)>;

#[derive(Default)]
pub(crate) struct QueueState {
    /// Ready items per workflow. Entries may be stale (the item moved on); takes skip them.
    pub(crate) ready: HashMap<String, VecDeque<Entry>>,
    /// Retries by due time: (due, seq, workflow, run, item).
    pub(crate) delayed: BinaryHeap<Timed>,
    /// Leases by expiry: (expiry, token, workflow, run, item). Renewals push a new entry.
    pub(crate) leases: BinaryHeap<Timed>,
    pub(crate) dead: BTreeMap<(RunId, ItemId), DeadLetter>,
    /// Dead letters in the order they came, for their retention.
    pub(crate) dead_order: VecDeque<(Instant, RunId, ItemId)>,
    pub(crate) next_token: u64,
    pub(crate) seq: u64,
}

impl QueueState {
    pub(crate) fn push_ready(&mut self, workflow: &str, entry: Entry) {
        match self.ready.get_mut(workflow) {
            Some(q) => q.push_back(entry),
            None => {
                self.ready
                    .insert(workflow.to_owned(), VecDeque::from([entry]));
            }
        }
    }

    /// The earliest time a delayed item or a lease falls due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let d = self.delayed.peek().map(|Reverse(e)| e.0);
        let l = self.leases.peek().map(|Reverse(e)| e.0);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Default)]
pub(crate) struct ContextsState {
    pub(crate) contexts: HashMap<RunId, (Vec<u8>, u64)>,
}

#[derive(Default)]
pub(crate) struct MetricsState {
    pub(crate) runs: HashMap<RunId, RunMetrics>,
}

#[derive(Default)]
pub(crate) struct ErrorsState {
    pub(crate) runs: HashMap<RunId, Vec<WorkflowError>>,
    /// Each run's step history, the latest [`HISTORY_KEPT`] events.
    ///
    /// [`HISTORY_KEPT`]: crate::distributed::history::HISTORY_KEPT
    pub(crate) history: HashMap<RunId, VecDeque<Recorded>>,
}

/// A step event as the history keeps it: the node and worker names are shared with the item
/// and its lease, so recording costs no allocation; a [`StepEvent`] is made when it is read.
pub(crate) struct Recorded {
    pub(crate) at: SystemTime,
    pub(crate) item: ItemId,
    pub(crate) node: Arc<str>,
    pub(crate) kind: StepEventKind,
    pub(crate) worker: Option<Arc<str>>,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
}

impl Recorded {
    /// The event as the backend API reports it.
    pub(crate) fn to_event(&self) -> StepEvent {
        let worker = self.worker.as_deref().map(|w| WorkerId(w.to_owned()));
        let kind = self.kind.clone();
        StepEvent::new(
            self.at,
            self.item,
            &*self.node,
            kind,
            worker,
            self.token,
            self.attempt,
        )
    }
}

#[derive(Default)]
pub(crate) struct LivenessState {
    pub(crate) workers: BTreeMap<WorkerId, WorkerHealth>,
    /// Registered graphs by workflow name and graph hash.
    pub(crate) graphs: BTreeMap<(String, String), crate::graph::RegisteredGraph>,
}
