//! [`DistributedError`]: what the distributed runtime and its backends report.

use std::time::Duration;

use crate::distributed::{RunId, RunStatus};
use crate::ItemId;

/// Errors of the distributed runtime and its backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DistributedError {
    /// No run has this id.
    #[error("unknown run `{0}`")]
    UnknownRun(RunId),
    /// A run with this id exists already.
    #[error("a run with id `{0}` exists already")]
    RunExists(RunId),
    /// The idempotency key was used by another start.
    #[error("idempotency key `{key}` already started run `{existing}`")]
    DuplicateRun {
        /// The key.
        key: String,
        /// The run it started.
        existing: RunId,
    },
    /// The run's state does not allow the request (e.g. cancelling a finished run).
    #[error("run `{run_id}` is {status}: cannot {action}")]
    InvalidRunState {
        /// The run.
        run_id: RunId,
        /// Its status.
        status: RunStatus,
        /// What was asked.
        action: &'static str,
    },
    /// No dead letter matches.
    #[error("no dead letter for item {item_id} of run `{run_id}`")]
    UnknownDeadLetter {
        /// The run.
        run_id: RunId,
        /// The item.
        item_id: ItemId,
    },
    /// A page cursor that this backend did not write (pass back [`RunPage::next`] as given).
    ///
    /// [`RunPage::next`]: super::RunPage::next
    #[error("`{0}` is not a cursor of this backend's run pages")]
    InvalidCursor(String),
    /// Stored bytes could not be decoded, or a value could not be encoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The backend could not be reached or answered with an error.
    #[error("backend error: {0}")]
    Backend(String),
    /// The run did not finish before the caller's deadline.
    #[error("run `{run_id}` did not finish within {waited:?}")]
    WaitTimeout {
        /// The run.
        run_id: RunId,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The run finished without the requested output.
    #[error("run `{run_id}` finished as {status} without output{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoOutput {
        /// The run.
        run_id: RunId,
        /// How it finished.
        status: RunStatus,
        /// Why, when it failed.
        error: Option<String>,
    },
    /// The run has passed its retention: its records are gone (its dead letters may remain,
    /// to be dropped).
    #[error("run `{0}` has passed its retention: its records are gone")]
    RunExpired(RunId),
    /// The backend cannot store a run under this id or idempotency key: it exceeds one of the
    /// backend's limits (a PostgreSQL index holds at most ~2.7 KB per key, after compression).
    /// Nothing was created; the other runs of the same `start_runs` call are started as usual.
    #[error("cannot start a run with this id or idempotency key: {0}")]
    StartRefused(String),
    /// A work item names a node its workflow does not have: the node was renamed or removed
    /// while items of it were queued (see the guide's deploy section).
    #[error(
        "work item of node `{node}`, which workflow `{workflow}` does not have (its nodes: \
         {known}): a node renamed or removed while its items were queued; deploy a version \
         that still has `{node}` until its items are done, then remove it"
    )]
    UnknownNode {
        /// The workflow.
        workflow: String,
        /// The node the item names.
        node: String,
        /// The workflow's nodes.
        known: String,
    },
    /// No live worker serves the run's workflow: its items wait in a queue nobody reads (a
    /// workflow renamed by a deploy while its runs were queued, or no worker deployed).
    #[error(
        "no live worker serves workflow `{workflow}` (live workers serve: {serving}): its \
         runs wait; if the workflow was renamed, run a worker of the old name until they are \
         done"
    )]
    NoWorker {
        /// The run's workflow.
        workflow: String,
        /// The workflows live workers serve.
        serving: String,
    },
    /// A builder was used without a required part.
    #[error("cannot build: {0}")]
    Build(String),
    /// A backend URL whose scheme names no backend this build has.
    #[error(
        "no backend for URL scheme `{scheme}`: this build knows {known} (the facade's features \
         `redis` and `postgres` add redis://, rediss:// and postgres://, postgresql://)"
    )]
    UnknownBackendScheme {
        /// The URL's scheme.
        scheme: String,
        /// The schemes this build knows, or "none".
        known: String,
    },
}
