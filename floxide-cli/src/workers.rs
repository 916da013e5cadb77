//! `floxide workers`: the last report of every worker, and whether it is alive.

use std::time::{Duration, SystemTime};

use floxide_core::distributed::{LivenessStatus, WorkerHealth, WorkerStatus};
use serde::Serialize;

use crate::commands::{CliError, Session};
use crate::render::{or_dash, rfc3339, timestamp_relative, Table};

/// A worker, for JSON.
#[derive(Debug, Serialize)]
struct WorkerView {
    worker_id: String,
    host: String,
    pid: u32,
    /// By the worker's clock.
    last_heartbeat: String,
    /// `idle`, `in_progress`, `retrying`, `stopping` or `stopped`.
    status: &'static str,
    /// The attempt being retried, when `retrying`.
    attempt: Option<u32>,
    current_run_id: Option<String>,
    current_item_id: Option<String>,
    error_count: u64,
    /// `alive`, `stale`, `dead` or `stopped`.
    liveness: &'static str,
}

fn status(status: &WorkerStatus) -> (&'static str, Option<u32>) {
    match status {
        WorkerStatus::Idle => ("idle", None),
        WorkerStatus::InProgress => ("in_progress", None),
        WorkerStatus::Retrying(attempt, _) => ("retrying", Some(*attempt)),
        WorkerStatus::Stopping => ("stopping", None),
        WorkerStatus::Stopped => ("stopped", None),
    }
}

/// The name of a worker's liveness.
pub(crate) fn liveness(liveness: LivenessStatus) -> &'static str {
    match liveness {
        LivenessStatus::Alive => "alive",
        LivenessStatus::Stale => "stale",
        LivenessStatus::Dead => "dead",
        LivenessStatus::Stopped => "stopped",
    }
}

/// `<run id>:<item id>`, as in `dlq` ids.
fn current_item(h: &WorkerHealth) -> Option<String> {
    match (&h.current_work_item_run_id, h.current_work_item) {
        (Some(run), Some(item)) => Some(format!("{run}:{item}")),
        _ => None,
    }
}

/// `floxide workers`.
pub async fn list(s: &mut Session, interval: Duration) -> Result<(), CliError> {
    let workers = s.backend.workers().await?;
    let now = SystemTime::now();
    let views: Vec<WorkerView> = workers
        .iter()
        .map(|h| {
            let (status, attempt) = status(&h.status);
            WorkerView {
                worker_id: h.worker_id.to_string(),
                host: h.host.clone(),
                pid: h.pid,
                last_heartbeat: rfc3339(h.last_heartbeat),
                status,
                attempt,
                current_run_id: h.current_work_item_run_id.clone(),
                current_item_id: h.current_work_item.map(|i| i.to_string()),
                error_count: h.error_count,
                liveness: liveness(h.liveness(now, interval)),
            }
        })
        .collect();
    s.print(&views, |views| {
        if views.is_empty() {
            return "no workers\n".to_owned();
        }
        let mut table = Table::new(&[
            "WORKER",
            "HOST",
            "PID",
            "LAST HEARTBEAT",
            "STATUS",
            "CURRENT ITEM",
            "ERRORS",
            "LIVENESS",
        ]);
        for (h, v) in workers.iter().zip(views) {
            let status = match v.attempt {
                Some(attempt) => format!("retrying (attempt {attempt})"),
                None => v.status.to_owned(),
            };
            table.row(vec![
                v.worker_id.clone(),
                v.host.clone(),
                v.pid.to_string(),
                timestamp_relative(h.last_heartbeat, now),
                status,
                or_dash(current_item(h)),
                v.error_count.to_string(),
                v.liveness.to_owned(),
            ]);
        }
        table.render()
    })
}
