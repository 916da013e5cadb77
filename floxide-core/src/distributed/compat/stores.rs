//! The seven store traits of Floxide 3.x, implemented once for every store type that is a view
//! of a backend ([`StoreView`]).
//!
//! Reads work as in 3.x. Writes that would change a run behind the engine's back (enqueue an
//! item outside a step, overwrite a context, set an item's status) would break the guarantees
//! (each step's effects applied once, under its lease), so they answer with an `Unsupported`
//! error that names what to use instead; the writes that are operator actions (a run's status
//! set to Cancelled, Paused or Running; a worker's health report) are carried out.
//!
//! This module holds their errors, the views and the two stores of the work itself (queue,
//! contexts); `observing` the five that read and steer runs (runs, metrics, errors, liveness,
//! item states).

use async_trait::async_trait;

use super::binding::StoreBinding;
use crate::distributed::codec::decode;
use crate::distributed::{DistributedError, WorkItemStatus};
use crate::{Context, Merge, WorkItem};

mod observing;

pub use observing::{ErrorStore, LivenessStore, MetricsStore, RunInfoStore, WorkItemStateStore};

/// A store operation that would change a run outside the engine's leased, fenced steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`{operation}` is not supported: {instead}")]
pub struct Unsupported {
    /// The operation.
    pub operation: &'static str,
    /// What to use instead.
    pub instead: &'static str,
}

macro_rules! store_error {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident $(($field:ty))?, $msg:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum $name {
            /// The backend could not be reached or failed.
            #[error("I/O error: {0}")]
            Io(String),
            $($(#[$vdoc])* #[error($msg)] $variant $(($field))?,)*
            /// Anything else (an undecodable value, an unknown run, ...).
            #[error("Other error: {0}")]
            Other(String),
            /// The operation would change a run outside the engine's steps.
            #[error(transparent)]
            Unsupported(#[from] Unsupported),
        }

        impl From<DistributedError> for $name {
            fn from(e: DistributedError) -> Self {
                match e {
                    DistributedError::Backend(message) => $name::Io(message),
                    other => $name::Other(other.to_string()),
                }
            }
        }
    };
}

store_error!(
    /// An error of a [`WorkQueue`].
    WorkQueueError {
        /// Nothing is queued for the run.
        Empty, "Queue is empty";
    }
);
store_error!(
    /// An error of a [`ContextStore`].
    ContextStoreError {}
);
store_error!(
    /// An error of a [`RunInfoStore`].
    RunInfoError {
        /// No such run.
        NotFound, "Not found";
    }
);
store_error!(
    /// An error of a [`MetricsStore`].
    MetricsError {
        /// No such run.
        NotFound, "Not found";
    }
);
store_error!(
    /// An error of an [`ErrorStore`].
    ErrorStoreError {}
);
store_error!(
    /// An error of a [`LivenessStore`].
    LivenessStoreError {}
);
store_error!(
    /// An error of a [`WorkItemStateStore`].
    WorkItemStateStoreError {
        /// No such run or work item.
        NotFound, "Not found";
    }
);

/// A work item of a run with its state (see [`WorkItemStateStore::get_all`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkItemState<W> {
    /// Its state.
    pub status: WorkItemStatus,
    /// The attempt it is at (1 for the first).
    pub attempts: u32,
    /// The work item.
    pub work_item: W,
}

/// The kind of store a [`StoreView`] is, named as in builder messages.
#[doc(hidden)]
pub trait StoreKind {
    /// The builder setter's name.
    const NAME: &'static str;
}

/// Marker types for the seven kinds of store.
#[doc(hidden)]
pub mod kind {
    macro_rules! kinds {
        ($($kind:ident = $name:literal),*) => {$(
            #[doc = concat!("The `", $name, "` kind.")]
            #[derive(Debug)]
            pub enum $kind {}
            impl super::StoreKind for $kind {
                const NAME: &'static str = $name;
            }
        )*};
    }
    kinds!(
        Queue = "queue",
        Contexts = "context_store",
        Runs = "run_info_store",
        Metrics = "metrics_store",
        Errors = "error_store",
        Liveness = "liveness_store",
        Items = "work_item_state_store"
    );
}

/// A store type that is a view of one backend, as store kind `K`, typed by `Value` (the work
/// item or context type; `()` for the untyped stores). Every such type implements the 3.x store
/// trait of its kind.
#[doc(hidden)]
pub trait StoreView<K: StoreKind>: Clone + Send + Sync + 'static {
    /// The type the view reads and writes.
    type Value;
    /// What this store is a view of.
    fn binding(&self) -> StoreBinding;
}

/// The backend of a view, for one of its operations.
fn backend_of<K: StoreKind, T: StoreView<K>>(
    view: &T,
) -> Result<std::sync::Arc<dyn crate::distributed::Backend>, DistributedError> {
    StoreBinding::unify(&[(K::NAME, &view.binding())])
}

/// `None` for an unknown run, the value otherwise.
fn known<T>(result: Result<T, DistributedError>) -> Result<Option<T>, DistributedError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(DistributedError::UnknownRun(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

const USE_STEPS: &str = "work items are enqueued and taken by the engine, under a lease, \
    within steps; start runs with `DistributedOrchestrator::start_run` or \
    `Workflow::start_distributed`, take items with `DistributedWorker::run_once` or \
    `Workflow::step_distributed`";

/// The work queue of Floxide 3.x: its reads, over the engine's queue.
#[async_trait]
pub trait WorkQueue<C: Context, WI: WorkItem>: Clone + Send + Sync + 'static {
    /// Enqueues a work item for a run (not supported on the engine's stores: see
    /// [`Unsupported`]).
    async fn enqueue(&self, workflow_id: &str, work: WI) -> Result<(), WorkQueueError>;
    /// Takes the next work item (not supported on the engine's stores: items are taken under
    /// a lease by workers).
    async fn dequeue(&self) -> Result<Option<(String, WI)>, WorkQueueError>;
    /// Drops a run's queued work (not supported on the engine's stores: cancel the run).
    async fn purge_run(&self, run_id: &str) -> Result<(), WorkQueueError>;
    /// The run's work items not yet committed.
    async fn pending_work(&self, run_id: &str) -> Result<Vec<WI>, WorkQueueError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

#[async_trait]
impl<C, WI, T> WorkQueue<C, WI> for T
where
    C: Context,
    WI: WorkItem,
    T: StoreView<kind::Queue, Value = WI>,
{
    async fn enqueue(&self, _run_id: &str, _work: WI) -> Result<(), WorkQueueError> {
        Err(Unsupported {
            operation: "WorkQueue::enqueue",
            instead: USE_STEPS,
        }
        .into())
    }
    async fn dequeue(&self) -> Result<Option<(String, WI)>, WorkQueueError> {
        Err(Unsupported {
            operation: "WorkQueue::dequeue",
            instead: USE_STEPS,
        }
        .into())
    }
    async fn purge_run(&self, _run_id: &str) -> Result<(), WorkQueueError> {
        Err(Unsupported {
            operation: "WorkQueue::purge_run",
            instead: "cancel the run (`DistributedOrchestrator::cancel`): its queued items are \
                      dropped",
        }
        .into())
    }
    async fn pending_work(&self, run_id: &str) -> Result<Vec<WI>, WorkQueueError> {
        let backend = backend_of(self)?;
        let mut items = Vec::new();
        for bytes in backend.pending_items(run_id).await? {
            items.push(decode::<WI>(&bytes).map_err(WorkQueueError::Other)?);
        }
        items.sort_by_key(WorkItem::instance_id);
        Ok(items)
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}

/// The context store of Floxide 3.x: each run's context.
#[async_trait]
pub trait ContextStore<C: Context + Merge>: Send + Sync {
    /// The run's context; `None` for an unknown run.
    async fn get(&self, run_id: &str) -> Result<Option<C>, ContextStoreError>;
    /// Replaces a run's context (not supported on the engine's stores: steps change it).
    async fn set(&self, run_id: &str, ctx: C) -> Result<(), ContextStoreError>;
    /// Merges into a run's context (not supported on the engine's stores: steps change it).
    async fn merge(&self, run_id: &str, ctx: C) -> Result<(), ContextStoreError>;

    /// What this store is a view of.
    #[doc(hidden)]
    fn binding(&self) -> StoreBinding {
        StoreBinding::Custom(std::any::type_name::<Self>())
    }
}

const CONTEXT_BY_STEPS: &str = "a run's context is set when it starts (`WorkflowCtx::store`) \
    and changed by its steps, each merged under the step's lease";

#[async_trait]
impl<C, T> ContextStore<C> for T
where
    C: Context + Merge + 'static,
    T: StoreView<kind::Contexts, Value = C>,
{
    async fn get(&self, run_id: &str) -> Result<Option<C>, ContextStoreError> {
        let backend = backend_of(self)?;
        match known(backend.load_context(run_id).await)? {
            None => Ok(None),
            Some(stored) => decode(&stored.bytes)
                .map(Some)
                .map_err(ContextStoreError::Other),
        }
    }
    async fn set(&self, _run_id: &str, _ctx: C) -> Result<(), ContextStoreError> {
        Err(Unsupported {
            operation: "ContextStore::set",
            instead: CONTEXT_BY_STEPS,
        }
        .into())
    }
    async fn merge(&self, _run_id: &str, _ctx: C) -> Result<(), ContextStoreError> {
        Err(Unsupported {
            operation: "ContextStore::merge",
            instead: CONTEXT_BY_STEPS,
        }
        .into())
    }
    fn binding(&self) -> StoreBinding {
        StoreView::binding(self)
    }
}
