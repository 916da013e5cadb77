//! What the dashboard remembers of the last minutes: every few seconds it reads the workers'
//! reports (their committed-step counters) and the queues' sizes; rates are differences of
//! two readings. Kept in memory only: a restarted dashboard starts a new history.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use floxide_core::distributed::{Backend, DistributedError, QueueStats};

/// How often the dashboard reads.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// How many readings it keeps (six minutes).
const KEPT: usize = 72;

/// One reading.
#[derive(Debug, Clone)]
struct Reading {
    at: SystemTime,
    /// Per worker: its workflow and its committed steps so far.
    steps: BTreeMap<String, (String, u64)>,
    /// Per workflow: its queue's sizes, when the backend keeps them.
    queues: BTreeMap<String, QueueStats>,
}

/// The readings, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    readings: Mutex<VecDeque<Reading>>,
}

/// Steps per second between two readings of one worker (0 when it restarted meanwhile).
fn rate(before: u64, after: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 / secs
}

impl History {
    /// Reads the workers and the queues of `workflows` once.
    ///
    /// # Errors
    /// A backend error (nothing is recorded then).
    pub(crate) async fn sample(
        &self,
        backend: &dyn Backend,
        workflows: &[String],
    ) -> Result<(), DistributedError> {
        let workers = backend.workers().await?;
        let mut queues = BTreeMap::new();
        for workflow in workflows {
            if let Some(stats) = backend.queue_stats(workflow).await? {
                queues.insert(workflow.clone(), stats);
            }
        }
        let reading = Reading {
            at: SystemTime::now(),
            steps: workers
                .into_iter()
                .map(|h| (h.worker_id.0, (h.workflow, h.steps_done)))
                .collect(),
            queues,
        };
        let mut readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        readings.push_back(reading);
        while readings.len() > KEPT {
            readings.pop_front();
        }
        Ok(())
    }

    fn readings(&self) -> Vec<Reading> {
        let readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        readings.iter().cloned().collect()
    }

    /// Each worker's steps per second over the last two readings that both saw it.
    pub(crate) fn worker_rates(&self) -> BTreeMap<String, f64> {
        let readings = self.readings();
        let [.., before, after] = readings.as_slice() else {
            return BTreeMap::new();
        };
        let secs = after
            .at
            .duration_since(before.at)
            .unwrap_or_default()
            .as_secs_f64();
        after
            .steps
            .iter()
            .filter_map(|(worker, (_, now))| {
                let (_, then) = before.steps.get(worker)?;
                Some((worker.clone(), rate(*then, *now, secs)))
            })
            .collect()
    }

    /// Per workflow: steps per second between consecutive readings (the workers of the
    /// workflow summed), and the ready items at each reading; oldest first.
    pub(crate) fn workflow_series(&self) -> BTreeMap<String, Series> {
        let readings = self.readings();
        let mut out: BTreeMap<String, Series> = BTreeMap::new();
        for pair in readings.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            let secs = after
                .at
                .duration_since(before.at)
                .unwrap_or_default()
                .as_secs_f64();
            let mut steps: BTreeMap<&str, f64> = BTreeMap::new();
            for (worker, (workflow, now)) in &after.steps {
                let then = before.steps.get(worker).map_or(*now, |(_, then)| *then);
                *steps.entry(workflow).or_default() += rate(then, *now, secs);
            }
            for (workflow, stats) in &after.queues {
                let series = out.entry(workflow.clone()).or_default();
                series
                    .steps_per_second
                    .push(steps.get(workflow.as_str()).copied().unwrap_or(0.0));
                series.ready.push(stats.ready);
            }
        }
        out
    }
}

/// One workflow's recent history.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) steps_per_second: Vec<f64>,
    pub(crate) ready: Vec<u64>,
}

/// A small line chart of `values` (oldest first) as inline SVG, with its latest and highest
/// value written beside it.
pub(crate) fn sparkline(values: &[f64], unit: &str) -> String {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    if values.len() < 2 {
        return format!(
            "<span class=\"chart\">collecting… (a reading every {}s)</span>",
            EVERY.as_secs()
        );
    }
    let max = values.iter().copied().fold(0.0, f64::max);
    let scale = if max > 0.0 { H / max } else { 0.0 };
    let step = W / (values.len() - 1) as f64;
    let mut points = String::new();
    for (i, v) in values.iter().enumerate() {
        let _ = write!(points, "{:.1},{:.1} ", i as f64 * step, H - v * scale);
    }
    let last = values.last().copied().unwrap_or(0.0);
    format!(
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 -2 {W} {}\" role=\"img\">\
         <polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"1.5\" points=\"{}\"/></svg> \
         <span>{last:.1} {unit} now, {max:.1} at most</span>",
        H + 4.0,
        points.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_survive_a_restarted_worker() {
        assert_eq!(rate(10, 30, 2.0), 10.0);
        assert_eq!(
            rate(30, 5, 2.0),
            0.0,
            "a counter that went back is a restart"
        );
        assert_eq!(rate(1, 2, 0.0), 0.0);
    }

    #[test]
    fn a_sparkline_needs_two_values_and_scales_to_the_highest() {
        assert!(sparkline(&[1.0], "steps/s").contains("collecting"));
        let svg = sparkline(&[0.0, 5.0, 10.0], "steps/s");
        assert!(
            svg.contains("points=\"0.0,40.0 120.0,20.0 240.0,0.0\""),
            "{svg}"
        );
        assert!(svg.contains("10.0 steps/s now, 10.0 at most"), "{svg}");
    }
}
