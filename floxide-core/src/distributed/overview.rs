//! What operators see of a deployment beyond single runs: queue counters per workflow
//! ([`Stats`]) and a run's progress ([`RunProgress`]). Backends compute them in their own way
//! (the Redis and PostgreSQL backends' `stats` and `progress`); the `floxide` command-line
//! tool prints them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Counters of one workflow (or of the whole deployment, see [`Stats::total`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCounts {
    /// Runs in the run index: unfinished ones and those finished within the retention.
    pub runs: u64,
    /// Of those, runs that are pending or running.
    pub active_runs: u64,
    /// Items waiting for a worker (with Redis, entries of runs cancelled since are counted
    /// until a worker pops and skips them).
    pub ready: u64,
    /// Failed items waiting for their retry's due time.
    pub delayed: u64,
    /// Leased items whose lease has not expired: being executed.
    pub in_flight: u64,
    /// Leases past their deadline that no take has reclaimed yet (their worker is dead or
    /// stalled; the next take hands them to another worker).
    pub expired_leases: u64,
    /// Dead-lettered items.
    pub dead_letters: u64,
    /// Steps committed, summed over the runs in the index (the runs' `completed` metric).
    pub completed_steps: u64,
    /// Runs that reached a final state (completed, failed or cancelled) in the minute before
    /// [`Stats::server_time`].
    pub finished_last_minute: u64,
}

impl WorkflowCounts {
    fn add(&mut self, other: &WorkflowCounts) {
        self.runs += other.runs;
        self.active_runs += other.active_runs;
        self.ready += other.ready;
        self.delayed += other.delayed;
        self.in_flight += other.in_flight;
        self.expired_leases += other.expired_leases;
        self.dead_letters += other.dead_letters;
        self.completed_steps += other.completed_steps;
        self.finished_last_minute += other.finished_last_minute;
    }
}

/// A snapshot of the queues of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The server's clock when the snapshot was taken (leases and retries use this clock).
    pub server_time: SystemTime,
    /// Counters per workflow name. Items whose run record has expired are counted under the
    /// empty name.
    pub workflows: BTreeMap<String, WorkflowCounts>,
}

impl Stats {
    /// The counters of every workflow added up.
    pub fn total(&self) -> WorkflowCounts {
        let mut total = WorkflowCounts::default();
        for counts in self.workflows.values() {
            total.add(counts);
        }
        total
    }

    /// Steps committed per second between `earlier` and this snapshot, by the server's clock;
    /// `None` when no time passed. Runs that leave the index in between (their retention
    /// ended) take their steps with them, so the rate is then slightly low, never negative.
    pub fn steps_per_second(&self, earlier: &Stats) -> Option<f64> {
        let elapsed = self
            .server_time
            .duration_since(earlier.server_time)
            .ok()
            .filter(|d| !d.is_zero())?;
        let steps = self
            .total()
            .completed_steps
            .saturating_sub(earlier.total().completed_steps);
        Some(steps as f64 / elapsed.as_secs_f64())
    }
}

/// How far a run is: its items, counted as they are created and committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    /// Work items created so far (the first included; fan-out adds more as the run goes).
    pub total: u64,
    /// Steps committed.
    pub completed: u64,
    /// Items not finished yet: waiting, in flight, waiting for a retry or held.
    pub outstanding: u64,
}
