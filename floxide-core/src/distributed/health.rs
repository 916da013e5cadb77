//! [`HealthReporter`]: a worker's health reports, at most one a second.

use std::time::{Duration, SystemTime};

use crate::distributed::backend::AdminBackend;
use crate::distributed::{RunId, WorkerHealth, WorkerId, WorkerStatus};

/// Sends a worker's health to the backend at most once a second, so that reporting never
/// costs a round trip per step.
pub(crate) struct HealthReporter {
    pub(crate) health: WorkerHealth,
    last: Option<tokio::time::Instant>,
    pub(crate) errors: u64,
}

impl HealthReporter {
    /// A reporter for `worker` of `workflow`, idle.
    pub(crate) fn new(worker: WorkerId, workflow: &str) -> Self {
        HealthReporter {
            health: WorkerHealth {
                worker_id: worker,
                host: hostname(),
                pid: std::process::id(),
                last_heartbeat: SystemTime::now(),
                error_count: 0,
                status: WorkerStatus::Idle,
                current_work_item: None,
                current_work_item_run_id: None,
                workflow: workflow.to_owned(),
                steps_done: 0,
            },
            last: None,
            errors: 0,
        }
    }

    /// The report to send now (`status`, and the item being executed), unless one went out
    /// less than a second ago.
    pub(crate) fn due(
        &mut self,
        status: WorkerStatus,
        item: Option<(crate::ItemId, RunId)>,
    ) -> Option<WorkerHealth> {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        self.health.status = status;
        self.health.error_count = self.errors;
        self.health.last_heartbeat = SystemTime::now();
        let (item, run) = item.map_or((None, None), |(i, r)| (Some(i), Some(r)));
        self.health.current_work_item = item;
        self.health.current_work_item_run_id = run;
        Some(self.health.clone())
    }

    /// Counts a step that ended, if it was committed.
    pub(crate) fn step_ended<O>(&mut self, end: &crate::distributed::exec::StepEnd<O>) {
        if matches!(end, crate::distributed::exec::StepEnd::Committed { .. }) {
            self.health.steps_done += 1;
        }
    }

    /// Reports that the worker stopped.
    pub(crate) async fn stopped<B: AdminBackend + ?Sized>(&mut self, backend: &B) {
        self.health.status = WorkerStatus::Stopped;
        self.health.current_work_item = None;
        self.health.current_work_item_run_id = None;
        self.health.last_heartbeat = SystemTime::now();
        let _ = backend.report_worker(&self.health).await;
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
