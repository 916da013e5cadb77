//! Starting, steering and inspecting runs ([`AdminBackend`]) on PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use floxide_core::distributed::history::HISTORY_KEPT;
use floxide_core::distributed::machine::{self, ControlEffect};
use floxide_core::distributed::{
    payload_text, AdminBackend, DeadLetter, DistributedError, NodeTiming, QueueStats, RunAction,
    RunId, RunInfo, RunMetrics, RunPage, RunQuery, RunStatus, RunWatch, StartRun, StepEvent,
    StepEventKind, WorkItemInfo, WorkItemStatus, WorkerHealth, WorkerId, WorkflowError,
};
use floxide_core::graph::VERSIONS_KEPT;
use floxide_core::{ItemId, RegisteredGraph, WorkflowGraph};
use tokio_postgres::Row;

use crate::ops::{self, backend, item_id, no_output, status};
use crate::PostgresBackend;

mod control;
mod letters;

use control::{cancel_run, finish_resumed, revivable_letters, revive_letters, Locked};

/// The columns of a run's record [`run_info_of`] reads (its outputs: the first, kept in the
/// record, then the others).
pub(crate) const INFO: &str = concat!(
    "r.run_id, r.workflow, ",
    ops::run_status!(),
    ", r.started_at, r.finished_at, r.output::text, \
    r.error, r.idempotency_key, r.deadline, \
    (CASE WHEN r.output IS NULL THEN '{}'::text[] ELSE ARRAY[r.output::text] END) || \
    (SELECT coalesce(array_agg(o.value::text ORDER BY o.seq), '{}') FROM outputs o \
     WHERE o.run_id = r.run_id)"
);

fn json(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

pub(crate) fn run_info_of(row: &Row) -> Result<RunInfo, DistributedError> {
    let outputs: Vec<String> = row.get(9);
    Ok(RunInfo {
        run_id: row.get(0),
        workflow: row.get(1),
        status: status(row.get(2))?,
        started_at: row.get(3),
        finished_at: row.get(4),
        output: json(row.get(5)),
        outputs: outputs
            .iter()
            .filter_map(|o| serde_json::from_str(o).ok())
            .collect(),
        error: row.get(6),
        idempotency_key: row.get(7),
        deadline: row.get(8),
    })
}

/// A row of `step_events`, or an item's unwritten lease event, in the same columns (a kind this
/// version does not know is left out).
fn step_event_of(row: &Row) -> Option<StepEvent> {
    let until: Option<std::time::SystemTime> = row.get(8);
    let kind = match row.get::<_, i8>(3) as u8 {
        b'L' => StepEventKind::Leased {
            until: until?,
            delivery: u32::try_from(row.get::<_, Option<i32>>(7)?).ok()?,
        },
        b'H' => StepEventKind::Renewed { until: until? },
        b'E' => StepEventKind::Expired,
        b'C' => StepEventKind::Committed,
        b'Z' => StepEventKind::Fenced,
        b'F' => StepEventKind::Failed { retry_at: until },
        b'R' => StepEventKind::Released,
        _ => return None,
    };
    Some(StepEvent::new(
        row.get(0),
        item_id(row.get(1)).ok()?,
        row.get::<_, String>(2),
        kind,
        row.get::<_, Option<String>>(4).map(WorkerId::from),
        row.get::<_, i64>(5) as u64,
        u32::try_from(row.get::<_, i32>(6)).ok()?,
    ))
}

fn item_status(state: i8) -> WorkItemStatus {
    match state as u8 {
        b'P' => WorkItemStatus::Pending,
        b'I' => WorkItemStatus::InProgress,
        b'R' => WorkItemStatus::WaitingRetry,
        b'K' => WorkItemStatus::Held,
        b'C' => WorkItemStatus::Completed,
        b'F' => WorkItemStatus::PermanentlyFailed,
        _ => WorkItemStatus::Cancelled,
    }
}

impl PostgresBackend {
    /// Fails with [`DistributedError::UnknownRun`] when the run does not exist.
    pub(crate) async fn known(
        &self,
        client: &impl tokio_postgres::GenericClient,
        run_id: &str,
    ) -> Result<(), DistributedError> {
        let found = client
            .query_opt("SELECT 1 FROM runs WHERE run_id = $1", &[&run_id])
            .await
            .map_err(backend)?;
        found
            .map(|_| ())
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))
    }
}

#[async_trait::async_trait]
impl AdminBackend for PostgresBackend {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        self.start_many(vec![start]).await.pop().unwrap_or_else(|| {
            Err(DistributedError::Backend(
                "PostgreSQL: no answer to a start".into(),
            ))
        })
    }

    async fn start_runs(&self, starts: Vec<StartRun>) -> Vec<Result<RunId, DistributedError>> {
        self.start_many(starts).await
    }

    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        let client = self.pooled().await?;
        // Waiters ask often: prepared once per connection.
        let statement = client
            .prepare_cached(&format!("SELECT {INFO} FROM runs r WHERE r.run_id = $1"))
            .await
            .map_err(backend)?;
        let row = client
            .query_opt(&statement, &[&run_id])
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        run_info_of(&row)
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        let client = self.pooled().await?;
        let rows = match status {
            Some(status) => {
                client
                    .query(
                        &format!(
                            "SELECT {INFO} FROM runs r WHERE {} = $1 ORDER BY r.seq DESC",
                            ops::run_status!()
                        ),
                        &[&status.to_string()],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        &format!("SELECT {INFO} FROM runs r ORDER BY r.seq DESC"),
                        &[],
                    )
                    .await
            }
        }
        .map_err(backend)?;
        rows.iter().map(run_info_of).collect()
    }

    async fn query_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        self.page_of_runs(query).await
    }

    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError> {
        let schema = self.config().schema().to_owned();
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let locked = Locked::read(&tx, run_id).await?;
        let current = locked.state.status;
        // A failed run past its retention whose items the sweep is deleting cannot come back.
        if action == RunAction::Resume && current == RunStatus::Failed && locked.leftovers {
            return Err(DistributedError::RunExpired(run_id.to_owned()));
        }
        // A failed run's dead letters are revived by a resume (up to 1000 per resume).
        let revivable = if action == RunAction::Resume && current == RunStatus::Failed {
            revivable_letters(&tx, run_id).await?
        } else {
            0
        };
        let mut reopening = false;
        let effect = match action {
            RunAction::Cancel => machine::cancel(current),
            RunAction::Pause => machine::pause(current),
            RunAction::Resume => machine::resume(locked.state, revivable as u64),
        }
        .map_err(|refused| DistributedError::InvalidRunState {
            run_id: run_id.to_owned(),
            status: current,
            action: refused.action,
        })?;
        match effect {
            ControlEffect::Cancel => cancel_run(&tx, run_id).await?,
            ControlEffect::Pause => {
                tx.execute(
                    "UPDATE runs SET status = 'paused' WHERE run_id = $1",
                    &[&run_id],
                )
                .await
                .map_err(backend)?;
            }
            ControlEffect::Resume(next) => {
                if revivable > 0 {
                    revive_letters(&tx, run_id).await?;
                }
                if next.is_finished() {
                    let error = (next == RunStatus::Failed).then(|| no_output(&locked.workflow));
                    finish_resumed(&tx, run_id, next, error).await?;
                } else {
                    reopening = ops::reopen(&tx, run_id, next).await?;
                    ops::notify_work(&tx, &schema).await?;
                }
            }
        }
        ops::notify_run(&tx, &schema, run_id).await?;
        let row = tx
            .query_one(
                &format!("SELECT {INFO} FROM runs r WHERE r.run_id = $1"),
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        let info = run_info_of(&row)?;
        tx.commit().await.map_err(backend)?;
        if reopening {
            ops::reopen_rest_or_leave(&client, &schema, run_id).await;
        }
        Ok(info)
    }

    fn watch_runs(&self) -> RunWatch {
        RunWatch::new(self.signals.runs.subscribe())
    }

    fn watch_run(&self, run_id: &str) -> RunWatch {
        self.signals.by_run.watch(run_id)
    }

    fn heard_output(&self, run_id: &str) -> Option<Vec<u8>> {
        self.signals.outputs.get(run_id)
    }

    async fn run_input(&self, run_id: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        let client = self.pooled().await?;
        let row = client
            .query_opt("SELECT input FROM runs WHERE run_id = $1", &[&run_id])
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        Ok(row.get(0))
    }

    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        let client = self.pooled().await?;
        self.known(&**client, run_id).await?;
        // The stored events, and the lease events of the steps in flight whose takes left them
        // unwritten (`items.leased_at`); in time order, the newest kept.
        let rows = client
            .query(
                "(SELECT at, replace(item_id::text, '-', ''), node, kind, worker, token, attempt, \
                  delivery, until, seq FROM step_events WHERE run_id = $1 \
                  ORDER BY seq DESC LIMIT $2) \
                 UNION ALL \
                 (SELECT leased_at, replace(item_id::text, '-', ''), node, 'L', worker, token, \
                  attempt, deliveries, leased_at + make_interval(secs => lease_ms / 1000), NULL \
                  FROM items WHERE run_id = $1 AND leased_at IS NOT NULL LIMIT $2)",
                &[&run_id, &(HISTORY_KEPT as i64)],
            )
            .await
            .map_err(backend)?;
        let mut events: Vec<(std::time::SystemTime, i64, StepEvent)> = rows
            .iter()
            .filter_map(|row| {
                let seq = row.get::<_, Option<i64>>(9).unwrap_or(i64::MAX);
                step_event_of(row).map(|e| (e.at, seq, e))
            })
            .collect();
        events.sort_by_key(|a| (a.0, a.1));
        let skip = events.len().saturating_sub(HISTORY_KEPT);
        Ok(Some(
            events.into_iter().skip(skip).map(|(_, _, e)| e).collect(),
        ))
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        let client = self.pooled().await?;
        self.known(&**client, run_id).await?;
        let rows = client
            .query(
                "SELECT error::text FROM errors WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect())
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        let client = self.pooled().await?;
        let row = client
            .query_opt(
                "SELECT items_created, steps_done, failures, retries, \
                 (SELECT count(*) FROM reclaims c WHERE c.run_id = r.run_id), \
                 node_timings::text FROM runs r WHERE run_id = $1",
                &[&run_id],
            )
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        let timings: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(row.get(5)).unwrap_or_default();
        let micros = |v: &serde_json::Value, k: &str| {
            Duration::from_micros(v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0))
        };
        let mut metrics = RunMetrics {
            total_work_items: row.get::<_, i64>(0) as u64,
            completed: row.get::<_, i64>(1) as u64,
            failed: row.get::<_, i64>(2) as u64,
            retries: row.get::<_, i64>(3) as u64,
            reclaimed: row.get::<_, i64>(4) as u64,
            ..RunMetrics::default()
        };
        for (node, t) in timings {
            let timing = NodeTiming {
                count: t
                    .get("count")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                total: micros(&t, "total_us"),
                max: micros(&t, "max_us"),
            };
            metrics.per_node.insert(node, timing);
        }
        Ok(metrics)
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        let client = self.pooled().await?;
        let run = client
            .query_opt("SELECT status FROM runs WHERE run_id = $1", &[&run_id])
            .await
            .map_err(backend)?
            .ok_or_else(|| DistributedError::UnknownRun(run_id.to_owned()))?;
        // Takes park a paused (or failed) run's ready items lazily: until one looks, they
        // are held all the same.
        let parked = !machine::takes_items(status(run.get(0))?);
        let rows = client
            .query(
                "SELECT replace(item_id::text, '-', ''), node, state, attempt, deliveries, \
                 worker, payload FROM items WHERE run_id = $1 ORDER BY item_id",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut state: i8 = row.get(2);
            if parked && state == b'P' as i8 {
                state = b'K' as i8;
            }
            out.push(WorkItemInfo {
                item_id: item_id(row.get(0))?,
                node: row.get(1),
                status: item_status(state),
                attempt: row.get::<_, i32>(3) as u32,
                deliveries: row.get::<_, i32>(4) as u32,
                worker: (state == b'I' as i8)
                    .then(|| row.get::<_, Option<String>>(5))
                    .flatten()
                    .map(|w| WorkerId::from(w.as_str())),
                payload: payload_text(row.get(6)),
            });
        }
        out.sort_by_key(|i| i.item_id);
        Ok(out)
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        let client = self.pooled().await?;
        self.known(&**client, run_id).await?;
        let rows = client
            .query(
                "SELECT payload FROM items WHERE run_id = $1 AND state IN ('P', 'I', 'R', 'K')",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        self.list_letters().await
    }

    async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        self.requeue_letter(run_id, item_id).await
    }

    async fn drop_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        self.drop_letter(run_id, item_id).await
    }

    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        let json =
            serde_json::to_string(health).map_err(|e| DistributedError::Codec(e.to_string()))?;
        let client = self.pooled().await?;
        client
            .execute(
                "INSERT INTO workers (worker_id, health) VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (worker_id) DO UPDATE SET health = excluded.health, seen_at = now()",
                &[&health.worker_id.as_str(), &json],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        let client = self.pooled().await?;
        let rows = client
            .query("SELECT health::text FROM workers ORDER BY worker_id", &[])
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect())
    }

    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError> {
        let json =
            serde_json::to_string(graph).map_err(|e| DistributedError::Codec(e.to_string()))?;
        let kept = VERSIONS_KEPT as i64;
        let client = self.pooled().await?;
        client
            .execute(
                "WITH registered AS ( \
                   INSERT INTO graphs (workflow, hash, graph) VALUES ($1, $2, $3::text::jsonb) \
                   ON CONFLICT (workflow, hash) DO UPDATE SET last_seen = now() \
                   RETURNING workflow) \
                 DELETE FROM graphs g WHERE g.workflow = $1 AND g.hash <> $2 AND g.hash NOT IN ( \
                   SELECT hash FROM graphs WHERE workflow = $1 AND hash <> $2 \
                   ORDER BY last_seen DESC LIMIT $4::bigint - 1)",
                &[&graph.workflow, &graph.hash(), &json, &kept],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        let client = self.pooled().await?;
        let rows = client
            .query(
                "SELECT graph::text, first_seen, last_seen FROM graphs ORDER BY first_seen DESC",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let graph: WorkflowGraph = serde_json::from_str(r.get::<_, &str>(0)).ok()?;
                Some(RegisteredGraph::new(graph, r.get(1), r.get(2)))
            })
            .collect())
    }

    async fn queue_stats(&self, workflow: &str) -> Result<Option<QueueStats>, DistributedError> {
        let client = self.pooled().await?;
        let row = client
            .query_one(
                "SELECT \
                   (SELECT count(*) FROM items WHERE workflow = $1 AND state = 'P'), \
                   (SELECT count(*) FROM items WHERE workflow = $1 AND state = 'R'), \
                   (SELECT count(*) FROM items WHERE workflow = $1 AND state = 'I'), \
                   (SELECT count(*) FROM dead_letters WHERE workflow = $1), \
                   (SELECT count(*) FROM reclaims c JOIN runs r ON r.run_id = c.run_id \
                    WHERE r.workflow = $1)",
                &[&workflow],
            )
            .await
            .map_err(backend)?;
        let mut stats = QueueStats::default();
        stats.ready = row.get::<_, i64>(0) as u64;
        stats.delayed = row.get::<_, i64>(1) as u64;
        stats.in_flight = row.get::<_, i64>(2) as u64;
        stats.dead_letters = row.get::<_, i64>(3) as u64;
        stats.leases_reclaimed = row.get::<_, i64>(4) as u64;
        Ok(Some(stats))
    }
}
