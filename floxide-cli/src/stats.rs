//! `floxide stats`: queue counters per workflow and throughput.
//!
//! Throughput is measured, not estimated: the steps committed by all runs in the index (each
//! run's `completed` counter) are summed twice, `--interval` apart by the server's clock, and
//! the difference is divided by the time between the two readings. The runs that finished in
//! the last minute are counted from their finish times.

use std::time::Duration;

use floxide_core::distributed::overview::{Stats, WorkflowCounts};
use serde::Serialize;

use crate::commands::{CliError, Session};
use crate::render::{duration, rfc3339, Table};

/// The name shown for items whose run record has expired.
const UNKNOWN: &str = "(expired runs)";

/// Counters of one workflow, for JSON.
#[derive(Debug, Serialize)]
struct WorkflowView {
    workflow: String,
    #[serde(flatten)]
    counts: WorkflowCounts,
}

/// The whole report, for JSON.
#[derive(Debug, Serialize)]
struct StatsView {
    /// The server's clock at the (last) reading.
    server_time: String,
    /// Seconds between the two readings (`null` when throughput was not measured).
    interval_secs: Option<f64>,
    /// Steps committed per second over the interval.
    steps_per_second: Option<f64>,
    total: WorkflowCounts,
    workflows: Vec<WorkflowView>,
}

/// `floxide stats`.
pub async fn show(s: &mut Session, interval: Duration) -> Result<(), CliError> {
    let first = s.backend.stats().await?;
    let (stats, measured): (Stats, Option<(f64, f64)>) = if interval.is_zero() {
        (first, None)
    } else {
        tokio::time::sleep(interval).await;
        let second = s.backend.stats().await?;
        let measured = second.steps_per_second(&first).map(|rate| {
            let secs = second
                .server_time
                .duration_since(first.server_time)
                .unwrap_or_default()
                .as_secs_f64();
            (secs, rate)
        });
        (second, measured)
    };
    let view = StatsView {
        server_time: rfc3339(stats.server_time),
        interval_secs: measured.map(|(secs, _)| secs),
        steps_per_second: measured.map(|(_, rate)| rate),
        total: stats.total(),
        workflows: stats
            .workflows
            .iter()
            .map(|(name, counts)| WorkflowView {
                workflow: name.clone(),
                counts: counts.clone(),
            })
            .collect(),
    };
    s.print(&view, |v| {
        let mut table = Table::new(&[
            "WORKFLOW",
            "RUNS",
            "ACTIVE",
            "READY",
            "DELAYED",
            "IN FLIGHT",
            "EXPIRED LEASES",
            "DEAD LETTERS",
            "STEPS DONE",
            "FINISHED/MIN",
        ]);
        let rows = v
            .workflows
            .iter()
            .map(|w| (w.workflow.as_str(), &w.counts))
            .chain(std::iter::once(("total", &v.total)));
        for (name, c) in rows {
            table.row(vec![
                if name.is_empty() { UNKNOWN } else { name }.to_owned(),
                c.runs.to_string(),
                c.active_runs.to_string(),
                c.ready.to_string(),
                c.delayed.to_string(),
                c.in_flight.to_string(),
                c.expired_leases.to_string(),
                c.dead_letters.to_string(),
                c.completed_steps.to_string(),
                c.finished_last_minute.to_string(),
            ]);
        }
        let mut text = table.render();
        text += &match measured {
            Some((secs, rate)) => format!(
                "throughput: {rate:.2} steps/s over {}\n",
                duration(Duration::from_secs_f64(secs))
            ),
            None => "throughput: not measured (--interval 0)\n".to_owned(),
        };
        text
    })
}
