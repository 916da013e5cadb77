//! What operators ask of a Redis deployment beyond the [`Backend`] trait: queue counters per
//! workflow ([`RedisBackend::stats`]), the lease deadlines of a run's in-flight items
//! ([`RedisBackend::lease_deadlines`]) and a run's progress ([`RedisBackend::progress`]).
//!
//! Everything here only reads: it never changes what workers see. The counters are read
//! with several commands, not one script, so they are a consistent picture of each key but
//! not of the deployment as a whole (an item may move from `ready` to `leases` between two
//! reads); they are meant for dashboards and the `floxide` command-line tool.
//!
//! [`Backend`]: floxide_core::distributed::Backend

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use floxide_core::distributed::{DistributedError, RunStatus};
use floxide_core::ItemId;
use redis::AsyncCommands;

use crate::backend::steps_done;
use crate::keys::Keys;
use crate::reply::time_ms;
use crate::RedisBackend;
pub use floxide_core::distributed::overview::{RunProgress, Stats, WorkflowCounts};

/// How many run records are read per pipelined round trip.
const BATCH: usize = 500;

/// What the stats read of one run record.
struct RunRow {
    workflow: String,
    status: Option<RunStatus>,
    completed_steps: u64,
    finished_ms: Option<u64>,
}

impl RedisBackend {
    /// Counts the ready, delayed, in-flight and dead-lettered items and the runs of every
    /// workflow, in every partition.
    ///
    /// Reads every run record in the run index (pipelined, 500 per round trip) and the
    /// whole lease, retry and dead-letter indexes: the cost grows with the number of runs
    /// kept (see the retention) and of items in those indexes.
    ///
    /// # Errors
    /// A backend error.
    pub async fn stats(&self) -> Result<Stats, DistributedError> {
        let now_ms = self.server_time_ms().await?;
        let mut workflows: BTreeMap<String, WorkflowCounts> = BTreeMap::new();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let workflow_of = self.count_runs(&pfx, now_ms, &mut workflows).await?;
            self.count_ready(&pfx, &mut workflows).await?;
            self.count_timers_and_letters(&pfx, now_ms, workflow_of, &mut workflows)
                .await?;
        }
        Ok(Stats {
            server_time: time_ms(now_ms),
            workflows,
        })
    }

    /// Counts the runs of partition `pfx`'s index into `workflows` (runs, active runs, steps
    /// done, runs finished in the last minute); returns each run's workflow.
    async fn count_runs(
        &self,
        pfx: &str,
        now_ms: u64,
        workflows: &mut BTreeMap<String, WorkflowCounts>,
    ) -> Result<HashMap<String, String>, DistributedError> {
        let ids: Vec<String> = self.sorted_set(&Keys::runs(pfx), false).await?;
        let mut workflow_of: HashMap<String, String> = HashMap::new();
        for (id, row) in ids.iter().zip(self.read_runs(pfx, &ids).await?) {
            let Some(row) = row else { continue };
            let counts = workflows.entry(row.workflow.clone()).or_default();
            counts.runs += 1;
            counts.active_runs += u64::from(row.status.is_some_and(RunStatus::is_active));
            counts.completed_steps += row.completed_steps;
            counts.finished_last_minute += u64::from(
                row.finished_ms
                    .is_some_and(|t| t <= now_ms && now_ms - t <= 60_000),
            );
            workflow_of.insert(id.clone(), row.workflow);
        }
        Ok(workflow_of)
    }

    /// Adds the length of partition `pfx`'s ready queue of each workflow in `workflows`.
    async fn count_ready(
        &self,
        pfx: &str,
        workflows: &mut BTreeMap<String, WorkflowCounts>,
    ) -> Result<(), DistributedError> {
        let names: Vec<String> = workflows.keys().cloned().collect();
        for name in names.iter().filter(|n| !n.is_empty()) {
            let key = Keys::queue(pfx, name);
            let key = &key;
            let ready: u64 = self
                .client()
                .run(|mut conn| async move { conn.llen(key).await })
                .await?;
            workflows.entry(name.clone()).or_default().ready += ready;
        }
        Ok(())
    }

    /// Counts partition `pfx`'s timers (in flight, expired leases, delayed retries) and dead
    /// letters into `workflows`, by the workflow of their run (`workflow_of`, completed here
    /// with the runs that left the index).
    async fn count_timers_and_letters(
        &self,
        pfx: &str,
        now_ms: u64,
        mut workflow_of: HashMap<String, String>,
        workflows: &mut BTreeMap<String, WorkflowCounts>,
    ) -> Result<(), DistributedError> {
        let timers: Vec<(String, f64)> = self.sorted_set(&Keys::timers(pfx), true).await?;
        let letters: Vec<String> = self
            .sorted_set(&Keys::dead_letter_index(pfx), false)
            .await?;
        // Timers are `L<entry>` (a lease, by expiry) or `R<entry>` (a retry, by due time).
        let entry_of = |t: &String| t.get(1..).map(str::to_owned).unwrap_or_default();
        let runs_of = |entries: &mut dyn Iterator<Item = String>| -> Vec<String> {
            entries
                .filter_map(|e| split_entry(&e).map(|(_, run)| run.to_owned()))
                .filter(|run| !workflow_of.contains_key(run))
                .collect()
        };
        let mut unknown = runs_of(&mut timers.iter().map(|(t, _)| entry_of(t)));
        unknown.extend(runs_of(&mut letters.iter().cloned()));
        unknown.sort();
        unknown.dedup();
        // Runs that left the index (or were never in it) but still have items here.
        for (id, row) in unknown.iter().zip(self.read_runs(pfx, &unknown).await?) {
            workflow_of.insert(id.clone(), row.map(|r| r.workflow).unwrap_or_default());
        }
        let workflow_of_entry = |entry: &str| {
            split_entry(entry)
                .and_then(|(_, run)| workflow_of.get(run))
                .cloned()
                .unwrap_or_default()
        };
        for (timer, due) in &timers {
            let counts = workflows
                .entry(workflow_of_entry(&entry_of(timer)))
                .or_default();
            if timer.starts_with('R') {
                counts.delayed += 1;
            } else if (*due as u64) > now_ms {
                counts.in_flight += 1;
            } else {
                counts.expired_leases += 1;
            }
        }
        for entry in &letters {
            workflows
                .entry(workflow_of_entry(entry))
                .or_default()
                .dead_letters += 1;
        }
        Ok(())
    }

    /// When the lease of each in-flight item of `run_id` expires (by the server's clock),
    /// unless its worker renews it first.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    pub async fn lease_deadlines(
        &self,
        run_id: &str,
    ) -> Result<BTreeMap<ItemId, SystemTime>, DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let pipe = {
            let mut pipe = redis::pipe();
            pipe.exists(Keys::run(&pfx, run_id))
                .zrange_withscores(Keys::timers(&pfx), 0, -1);
            pipe
        };
        let pipe = &pipe;
        let (exists, timers): (bool, Vec<(String, f64)>) = self
            .client()
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        if !exists {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        }
        Ok(timers
            .into_iter()
            .filter_map(|(timer, expiry)| {
                let entry = timer.strip_prefix('L')?;
                let (item, run) = split_entry(entry)?;
                let item = item.parse::<ItemId>().ok()?;
                (run == run_id).then(|| (item, time_ms(expiry as u64)))
            })
            .collect())
    }

    /// How many of a run's items are completed and how many are outstanding: one read of
    /// the run record, cheap enough to poll.
    ///
    /// # Errors
    /// [`DistributedError::UnknownRun`] or a backend error.
    pub async fn progress(&self, run_id: &str) -> Result<RunProgress, DistributedError> {
        let key = Keys::run(&self.keys().partition_of_run(run_id), run_id);
        let key = &key;
        // Status, items, steps done (older records), outstanding, node timings.
        type Fields = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
            Option<String>,
        );
        let (status, total, done, left, nt): Fields = self
            .client()
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["st", "m_items", "m_done", "left", "nt"])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if status.is_none() {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        }
        Ok(RunProgress {
            // (A new run's record leaves out its starting counters: see `lua/start_run.lua`.)
            total: total.unwrap_or(1),
            completed: steps_done(done, nt.as_deref()),
            outstanding: left.unwrap_or(1).max(0) as u64,
        })
    }

    async fn server_time_ms(&self) -> Result<u64, DistributedError> {
        let (secs, micros): (u64, u64) = self
            .client()
            .run(|mut conn| async move { redis::cmd("TIME").query_async(&mut conn).await })
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The members of sorted set `key` in order (with their scores when `scores`), read
    /// [`BATCH`] at a time: one `ZRANGE` of a huge set would hold the server up (G9). Members
    /// added or removed between two reads may be missed or read twice; the figures are those
    /// of a moving system anyway.
    async fn sorted_set<T: redis::FromRedisValue + Send>(
        &self,
        key: &str,
        scores: bool,
    ) -> Result<Vec<T>, DistributedError> {
        let mut all = Vec::new();
        loop {
            let start = all.len() as isize;
            let stop = start + BATCH as isize - 1;
            let page: Vec<T> = self
                .client()
                .run(|mut conn| async move {
                    if scores {
                        conn.zrange_withscores(key, start, stop).await
                    } else {
                        conn.zrange(key, start, stop).await
                    }
                })
                .await?;
            let full = page.len() == BATCH;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// The records of runs `ids` of partition `pfx` (`None` for a run whose record is gone).
    async fn read_runs(
        &self,
        pfx: &str,
        ids: &[String],
    ) -> Result<Vec<Option<RunRow>>, DistributedError> {
        type Fields = (
            Option<String>,
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let pipe = {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("HMGET")
                        .arg(Keys::run(pfx, id))
                        .arg(&["wf", "st", "m_done", "t1", "nt"]);
                }
                pipe
            };
            let pipe = &pipe;
            let fields: Vec<Fields> = self
                .client()
                .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?;
            rows.extend(fields.into_iter().map(|(workflow, status, done, t1, nt)| {
                Some(RunRow {
                    workflow: workflow?,
                    status: status.and_then(|s| s.parse().ok()),
                    completed_steps: steps_done(done, nt.as_deref()),
                    finished_ms: t1,
                })
            }));
        }
        Ok(rows)
    }
}

/// A queue entry `<item id: 32 hex digits>:<run id>` as (item id, run id).
fn split_entry(entry: &str) -> Option<(&str, &str)> {
    let (item, run) = entry.split_at_checked(32)?;
    Some((item, run.strip_prefix(':')?))
}

#[cfg(test)]
mod tests {
    use super::split_entry;

    #[test]
    fn entries_split_into_item_and_run() {
        let item = "0".repeat(31) + "1";
        assert_eq!(
            split_entry(&format!("{item}:run:with:colons")),
            Some((item.as_str(), "run:with:colons"))
        );
        assert_eq!(split_entry("short"), None);
        assert_eq!(split_entry(&format!("{item}x")), None);
    }
}
