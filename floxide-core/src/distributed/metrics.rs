//! The distributed worker's metrics, recorded through the [`metrics`] facade.
//!
//! Every metric name and label is made here. The worker records each step it executes; a
//! process that exports metrics also samples its workflow's queue from the backend every
//! few seconds. Until the program installs a recorder (the worker runner's `--metrics-addr`,
//! [`install_prometheus_exporter`], or any other `metrics` recorder), a call does nothing
//! but build its labels. The in-process `run` records nothing.
//!
//! | Name                             | Type      | Labels                       |
//! |----------------------------------|-----------|------------------------------|
//! | `floxide_steps_total`            | counter   | `workflow`, `node`, `outcome` |
//! | `floxide_step_duration_seconds`  | histogram | `workflow`, `node`           |
//! | `floxide_commit_conflicts_total` | counter   | `workflow`                   |
//! | `floxide_leases_lost_total`      | counter   | `workflow`                   |
//! | `floxide_dead_letters_total`     | counter   | `workflow`                   |
//! | `floxide_queue_depth`            | gauge     | `workflow`                   |
//! | `floxide_queue_delayed`          | gauge     | `workflow`                   |
//! | `floxide_queue_in_flight`        | gauge     | `workflow`                   |
//! | `floxide_queue_dead_letters`     | gauge     | `workflow`                   |
//! | `floxide_leases_reclaimed_total` | counter   | `workflow`                   |

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, SharedString,
    Unit,
};

use crate::distributed::backend::{Backend, DistributedError};

const STEPS: &str = "floxide_steps_total";
const STEP_DURATION: &str = "floxide_step_duration_seconds";
const COMMIT_CONFLICTS: &str = "floxide_commit_conflicts_total";
const LEASES_LOST: &str = "floxide_leases_lost_total";
const DEAD_LETTERS: &str = "floxide_dead_letters_total";
const QUEUE_DEPTH: &str = "floxide_queue_depth";
const QUEUE_DELAYED: &str = "floxide_queue_delayed";
const QUEUE_IN_FLIGHT: &str = "floxide_queue_in_flight";
const QUEUE_DEAD_LETTERS: &str = "floxide_queue_dead_letters";
const LEASES_RECLAIMED: &str = "floxide_leases_reclaimed_total";

/// How often a worker process that exports metrics samples its queue.
pub(crate) const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How a step ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    /// Committed; the node ran this long.
    Committed { ran: Duration },
    /// Failed, retry scheduled.
    Retried,
    /// Failed, dead-lettered.
    Failed,
    /// Not executable (undecodable item or context, deadline passed): dead-lettered.
    DeadLettered,
    /// Lease lost (`lease_lost`) or run inactive: nothing applied.
    Abandoned { lease_lost: bool },
    /// Released on shutdown.
    Released,
}

/// Records how a step of `workflow` that executed `node` ended. `nodes` are the workflow's
/// node names: a node among them is labelled by its static name, so recording a step does
/// not copy it.
pub(crate) fn step_ended(
    workflow: &'static str,
    nodes: &'static [&'static str],
    node: &str,
    outcome: StepOutcome,
) {
    let node = match nodes.iter().find(|n| **n == node) {
        Some(name) => SharedString::const_str(name),
        None => SharedString::from(node.to_owned()),
    };
    let label = match outcome {
        StepOutcome::Committed { .. } => "committed",
        StepOutcome::Retried => "retried",
        StepOutcome::Failed => "failed",
        StepOutcome::DeadLettered => "dead_lettered",
        StepOutcome::Abandoned { .. } => "abandoned",
        StepOutcome::Released => "released",
    };
    counter!(STEPS, "workflow" => workflow, "node" => node.clone(), "outcome" => label)
        .increment(1);
    match outcome {
        StepOutcome::Committed { ran } => {
            histogram!(STEP_DURATION, "workflow" => workflow, "node" => node)
                .record(ran.as_secs_f64());
        }
        StepOutcome::Failed | StepOutcome::DeadLettered => {
            counter!(DEAD_LETTERS, "workflow" => workflow).increment(1);
        }
        StepOutcome::Abandoned { lease_lost: true } => {
            counter!(LEASES_LOST, "workflow" => workflow).increment(1);
        }
        StepOutcome::Retried
        | StepOutcome::Abandoned { lease_lost: false }
        | StepOutcome::Released => {}
    }
}

/// Records a commit of `workflow` rejected because the run's context changed meanwhile.
pub(crate) fn commit_conflict(workflow: &'static str) {
    counter!(COMMIT_CONFLICTS, "workflow" => workflow).increment(1);
}

/// Gives the installed recorder the help text and unit of every Floxide metric.
/// `install_prometheus_exporter` (feature `prometheus`) calls it; call it after installing
/// another recorder.
pub fn describe_metrics() {
    describe_counter!(
        STEPS,
        "Steps executed by this process's workers, by how they ended: committed, retried \
         (failed, retry scheduled), failed (failed, dead-lettered), dead_lettered (not \
         executable: undecodable item or context, deadline passed), abandoned (lease lost or \
         run inactive), released (shutdown)"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "How long the node of a committed step ran"
    );
    describe_counter!(
        COMMIT_CONFLICTS,
        "Commits rejected because the run's context changed since the step read it (the step \
         merges and commits again, or a held step runs again)"
    );
    describe_counter!(
        LEASES_LOST,
        "Steps abandoned because their lease expired and another worker may hold the item"
    );
    describe_counter!(DEAD_LETTERS, "Items this process's workers dead-lettered");
    describe_gauge!(
        QUEUE_DEPTH,
        "Items ready to be taken (sampled from the backend)"
    );
    describe_gauge!(
        QUEUE_DELAYED,
        "Items waiting for a scheduled retry (sampled from the backend)"
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        "Items leased by a worker of any process (sampled from the backend)"
    );
    describe_gauge!(
        QUEUE_DEAD_LETTERS,
        "Dead letters kept in the backend (sampled from the backend)"
    );
    describe_counter!(
        LEASES_RECLAIMED,
        "Expired leases whose items went back to the queue, over every worker (sampled from the \
         backend)"
    );
}

/// Samples `workflow`'s queue from `backend` into the queue gauges and the reclaimed-leases
/// counter. Returns `false`, recording nothing, when the backend keeps no queue statistics.
///
/// The values are the backend's, the same in every worker process: aggregate them across
/// processes with `max`, not `sum`.
///
/// # Errors
/// A backend error.
pub async fn record_queue_stats(
    backend: &dyn Backend,
    workflow: &str,
) -> Result<bool, DistributedError> {
    let Some(stats) = backend.queue_stats(workflow).await? else {
        return Ok(false);
    };
    let gauges = [
        (QUEUE_DEPTH, stats.ready),
        (QUEUE_DELAYED, stats.delayed),
        (QUEUE_IN_FLIGHT, stats.in_flight),
        (QUEUE_DEAD_LETTERS, stats.dead_letters),
    ];
    for (name, value) in gauges {
        gauge!(name, "workflow" => workflow.to_owned()).set(value as f64);
    }
    counter!(LEASES_RECLAIMED, "workflow" => workflow.to_owned()).absolute(stats.leases_reclaimed);
    Ok(true)
}

/// Exports `workflow`'s counters at zero, then samples its queue every
/// [`QUEUE_SAMPLE_INTERVAL`] until the backend turns out to keep no statistics. Runs until
/// dropped.
pub(crate) async fn sample_queue_stats(backend: Arc<dyn Backend>, workflow: &'static str) {
    for name in [COMMIT_CONFLICTS, LEASES_LOST, DEAD_LETTERS] {
        counter!(name, "workflow" => workflow).increment(0);
    }
    loop {
        match record_queue_stats(&*backend, workflow).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => tracing::debug!(%error, "could not sample the queue for metrics"),
        }
        tokio::time::sleep(QUEUE_SAMPLE_INTERVAL).await;
    }
}

/// Installs a Prometheus recorder for the `metrics` facade and serves its scrape endpoint over
/// HTTP on `addr` (any path answers), then [describes](describe_metrics) Floxide's metrics.
/// Step durations are histograms with buckets from 1 ms to 5 min.
///
/// Call it inside a Tokio runtime, which then serves the endpoint (otherwise the exporter
/// starts a thread with a runtime of its own). A process has one recorder: a second call
/// fails.
///
/// # Errors
/// `addr` cannot be bound, or a recorder is installed already.
#[cfg(feature = "prometheus")]
pub fn install_prometheus_exporter(
    addr: std::net::SocketAddr,
) -> Result<(), metrics_exporter_prometheus::BuildError> {
    const BUCKETS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 300.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(STEP_DURATION.to_owned()),
            BUCKETS,
        )?
        .install()?;
    describe_metrics();
    Ok(())
}
