//! The records the distributed runtime keeps about runs, items and workers.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::ItemId;

// The other names of the Floxide 3.x module `floxide::distributed::types`.
pub use super::compat::{
    ErrorStoreError, ItemProcessedOutcome, LivenessStoreError, StepCallbacks, StepError,
};

/// The name of a run.
pub type RunId = String;

/// The name of a worker, unique across processes (see [`WorkerId::unique`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// `{prefix}-{host}-{pid}-{n}`: unique across the processes of a deployment as long as
    /// `n` is unique within the process (see [`WorkerId::next`]).
    pub fn unique(prefix: &str, n: usize) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        WorkerId(format!("{prefix}-{host}-{}-{n}", std::process::id()))
    }

    /// A fresh `{prefix}-{host}-{pid}-{n}` id, `n` counting the ids made in this process, so
    /// that several pools in one process never share an id.
    pub fn next(prefix: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        WorkerId::unique(
            prefix,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! worker_id_from {
    ($($t:ty),*) => {$(
        impl From<$t> for WorkerId {
            fn from(n: $t) -> Self {
                WorkerId(n.to_string())
            }
        }
    )*};
}
worker_id_from!(usize, u64, u32, i32, i64, &str, String, &String);

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    /// Started, no step has committed yet.
    Pending,
    /// At least one step has committed and work is left.
    Running,
    /// Held by [`pause`](crate::distributed::DistributedOrchestrator::pause): no step starts.
    Paused,
    /// No work is left and a terminal produced output.
    Completed,
    /// A step failed without a route, its retries ran out, or the run ended without output.
    Failed,
    /// Cancelled: no step starts; in-flight steps are signalled and their commits rejected.
    Cancelled,
}

impl RunStatus {
    /// Every status, in the order of a run's life.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Paused,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The status's name, in lower case (`"pending"`, …, `"cancelled"`), as displayed and
    /// parsed.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run has reached a final state (`resume` can still revive a failed run).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// Whether steps of the run may start.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "pending" => RunStatus::Pending,
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" | "canceled" => RunStatus::Cancelled,
            other => return Err(format!("unknown run status `{other}`")),
        })
    }
}

/// What is known about a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// Its status.
    pub status: RunStatus,
    /// When it was started.
    pub started_at: SystemTime,
    /// When it reached Completed, Failed or Cancelled.
    pub finished_at: Option<SystemTime>,
    /// The first terminal output, serialized as JSON.
    pub output: Option<serde_json::Value>,
    /// Every terminal output, in commit order (a run with several terminal branches).
    pub outputs: Vec<serde_json::Value>,
    /// The error that failed the run, if it failed.
    pub error: Option<String>,
    /// The idempotency key the run was started with.
    pub idempotency_key: Option<String>,
    /// The wall-clock deadline of the whole run (from the `WorkflowCtx` timeout).
    pub deadline: Option<SystemTime>,
}

/// Timing of one node across a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTiming {
    /// Committed executions.
    pub count: u64,
    /// Their total duration.
    pub total: Duration,
    /// The longest one.
    pub max: Duration,
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Work items created (the first included).
    pub total_work_items: u64,
    /// Steps committed.
    pub completed: u64,
    /// Steps that failed (each failed attempt counts).
    pub failed: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Leases that expired and whose item was handed to another worker.
    pub reclaimed: u64,
    /// Per-node timing of committed steps.
    pub per_node: BTreeMap<String, NodeTiming>,
}

/// One failure recorded for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowError {
    /// The work item that failed.
    pub work_item: ItemId,
    /// Its node.
    pub node: String,
    /// What went wrong.
    pub error: String,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// Whether the failure was routed to `on_failure` (the run went on).
    pub handled: bool,
    /// When it happened.
    pub timestamp: SystemTime,
}

/// The state of one work item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkItemStatus {
    /// Waiting for a worker.
    #[default]
    Pending,
    /// Leased by a worker.
    InProgress,
    /// Failed; a retry is scheduled.
    WaitingRetry,
    /// Held while its run is paused or failed.
    Held,
    /// Committed.
    Completed,
    /// Dead-lettered: retries exhausted, poison, or undecodable.
    PermanentlyFailed,
    /// Dropped because its run was cancelled.
    Cancelled,
}

/// A work item of a run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItemInfo {
    /// Its id.
    pub item_id: ItemId,
    /// The node it runs.
    pub node: String,
    /// Its state.
    pub status: WorkItemStatus,
    /// The attempt it is at (1 for the first).
    pub attempt: u32,
    /// How many times it was handed to a worker in this attempt.
    pub deliveries: u32,
    /// The worker holding it, when in progress.
    pub worker: Option<WorkerId>,
    /// The work item, as stored (JSON text or a bytes summary).
    pub payload: String,
}

/// What a worker is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerStatus {
    /// Waiting for work.
    #[default]
    Idle,
    /// Executing a step.
    InProgress,
    /// Executing a retry: attempt and maximum.
    Retrying(u32, u32),
    /// Stopping: finishing or releasing its in-flight items.
    Stopping,
    /// Stopped.
    Stopped,
}

/// A worker's last report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHealth {
    /// The worker.
    pub worker_id: WorkerId,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it last reported.
    pub last_heartbeat: SystemTime,
    /// Failed steps so far.
    pub error_count: u64,
    /// What it is doing.
    pub status: WorkerStatus,
    /// The item it executes.
    pub current_work_item: Option<ItemId>,
    /// The run of that item.
    pub current_work_item_run_id: Option<RunId>,
    /// The workflow it executes (empty in reports of other sources).
    #[serde(default)]
    pub workflow: String,
    /// Steps it committed since it started (a rate is the difference of two reports).
    #[serde(default)]
    pub steps_done: u64,
}

/// A report of no worker yet (Floxide 3.x): id `0`, idle, heartbeat now.
impl Default for WorkerHealth {
    fn default() -> Self {
        WorkerHealth {
            worker_id: WorkerId::from(0usize),
            host: String::new(),
            pid: 0,
            last_heartbeat: SystemTime::now(),
            error_count: 0,
            status: WorkerStatus::Idle,
            current_work_item: None,
            current_work_item_run_id: None,
            workflow: String::new(),
            steps_done: 0,
        }
    }
}

/// Why an active run makes no progress when no live worker serves its workflow (a workflow
/// renamed by a deploy while its runs were queued, or no worker deployed at all): `None` when
/// a worker of `info.workflow` reported within `alive` before `now`, or the run is not
/// active.
pub fn stall_of(
    info: &RunInfo,
    workers: &[WorkerHealth],
    now: SystemTime,
    alive: Duration,
) -> Option<crate::distributed::DistributedError> {
    if !info.status.is_active() {
        return None;
    }
    let live = |h: &&WorkerHealth| {
        h.status != WorkerStatus::Stopped
            && now
                .duration_since(h.last_heartbeat)
                .is_ok_and(|d| d <= alive)
    };
    if workers
        .iter()
        .filter(live)
        .any(|h| h.workflow == info.workflow || h.workflow.is_empty())
    {
        return None;
    }
    let mut serving: Vec<&str> = workers
        .iter()
        .filter(live)
        .map(|h| h.workflow.as_str())
        .collect();
    serving.sort_unstable();
    serving.dedup();
    Some(crate::distributed::DistributedError::NoWorker {
        workflow: info.workflow.clone(),
        serving: serving.join(", "),
    })
}

/// Whether a worker is alive, judged by its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LivenessStatus {
    /// Reported recently.
    Alive,
    /// Late: missed a few heartbeats.
    Stale,
    /// Silent for longer than the lease timeout: its items are being reclaimed.
    Dead,
    /// Stopped on purpose.
    Stopped,
}

impl WorkerHealth {
    /// Liveness at `now` for a worker expected to report every `interval`.
    pub fn liveness(&self, now: SystemTime, interval: Duration) -> LivenessStatus {
        if self.status == WorkerStatus::Stopped {
            return LivenessStatus::Stopped;
        }
        let silent = now.duration_since(self.last_heartbeat).unwrap_or_default();
        if silent <= interval * 2 {
            LivenessStatus::Alive
        } else if silent <= interval * 6 {
            LivenessStatus::Stale
        } else {
            LivenessStatus::Dead
        }
    }
}

/// A work item that could not be processed: retries exhausted, delivered too often, or
/// undecodable. It stays here until re-enqueued or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its run.
    pub run_id: RunId,
    /// The item.
    pub item_id: ItemId,
    /// Its node (as recorded; may be empty for undecodable items).
    pub node: String,
    /// Why it was dead-lettered.
    pub error: String,
    /// Deliveries in its last attempt.
    pub deliveries: u32,
    /// Its attempt.
    pub attempt: u32,
    /// When.
    pub at: SystemTime,
    /// The item as stored (JSON text or a bytes summary).
    pub payload: String,
}

/// A readable form of stored bytes (an item's payload in listings and dead letters): the text
/// when UTF-8, else a summary. Backends use it so that every one shows payloads alike.
pub fn payload_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("<{} bytes, not UTF-8>", bytes.len()),
    }
}
