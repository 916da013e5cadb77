//! The worker's path in SQL: start a run, take a batch of items under leases, commit a batch
//! of steps (each fenced by its lease token) with the next take in the same transaction.
//!
//! Each operation is one transaction. Rows are locked in one order everywhere, items before
//! their run, so that concurrent takes and commits do not deadlock; a take skips items other
//! transactions hold (`FOR UPDATE SKIP LOCKED`). The run's status follows the state machine
//! of `floxide_core::distributed::machine`, computed in Rust from the locked row.
//!
//! These are the building blocks of the backend traits, which come next (issue 14).

use deadpool_postgres::Transaction;
use floxide_core::distributed::machine::{self, RunState};
use floxide_core::distributed::{
    CommitItem, CommitOutcome, DistributedError, Lease, RunStatus, StartRun, TakeRequest, Taken,
    VersionedContext, WorkflowError, MAX_BATCH,
};
use floxide_core::ItemId;

use crate::error::describe;
use crate::PostgresBackend;

/// A query error as the runtime's error.
fn backend(e: tokio_postgres::Error) -> DistributedError {
    DistributedError::Backend(format!("PostgreSQL: {}", describe(&e)))
}

/// A stored item id (a uuid's text) as an [`ItemId`].
fn item_id(text: &str) -> Result<ItemId, DistributedError> {
    text.replace('-', "")
        .parse()
        .map_err(|_| DistributedError::Backend(format!("PostgreSQL: malformed item id `{text}`")))
}

/// A stored run status.
fn status(text: &str) -> Result<RunStatus, DistributedError> {
    text.parse()
        .map_err(|e| DistributedError::Backend(format!("PostgreSQL: {e}")))
}

/// The error of a run that finished without output.
fn no_output(workflow: &str) -> String {
    format!("workflow `{workflow}` finished without output: no terminal node produced a value")
}

impl PostgresBackend {
    /// Stores a run's record, context and first item in one transaction. A retry of the same
    /// request (`request`) answers as the first attempt did.
    pub(crate) async fn start_run_as(
        &self,
        start: &StartRun,
        request: &str,
    ) -> Result<(), DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT INTO runs (run_id, workflow, status, context, outstanding, start_request, \
                 deadline, idempotency_key) VALUES ($1, $2, 'pending', $3, 1, $4, $5, $6) \
                 ON CONFLICT DO NOTHING",
                &[
                    &start.run_id,
                    &start.workflow,
                    &start.context,
                    &request,
                    &start.deadline,
                    &start.idempotency_key,
                ],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            let same_id = tx
                .query_opt(
                    "SELECT start_request FROM runs WHERE run_id = $1",
                    &[&start.run_id],
                )
                .await
                .map_err(backend)?;
            return match same_id {
                Some(row) if row.get::<_, &str>(0) == request => Ok(()),
                Some(_) => Err(DistributedError::RunExists(start.run_id.clone())),
                None => {
                    let key = start.idempotency_key.clone().unwrap_or_default();
                    let existing = tx
                        .query_opt(
                            "SELECT run_id FROM runs WHERE idempotency_key = $1",
                            &[&key],
                        )
                        .await
                        .map_err(backend)?
                        .map(|row| row.get::<_, String>(0))
                        .unwrap_or_default();
                    Err(DistributedError::DuplicateRun { key, existing })
                }
            };
        }
        tx.execute(
            "INSERT INTO items (run_id, item_id, workflow, node, payload, state) \
             VALUES ($1, $2::text::uuid, $3, $4, $5, 'P')",
            &[
                &start.run_id,
                &start.first.id.to_string(),
                &start.workflow,
                &start.first.node,
                &start.first.bytes,
            ],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Leases up to `take.max` items of `take.workflow` whose time has come: ready ones,
    /// expired leases (reclaimed) and due retries. Items of paused or failed runs are parked,
    /// those of finished runs dropped; an item delivered too often is a poison item.
    pub(crate) async fn take_now(
        &self,
        take: TakeRequest<'_>,
    ) -> Result<Vec<Taken>, DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let taken = take_in(&tx, take).await?;
        tx.commit().await.map_err(backend)?;
        Ok(taken)
    }

    /// Commits `commits` in one transaction, each applied or refused on its own, and leases
    /// up to `next.max` items in the same transaction.
    pub(crate) async fn commit_now(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        request: &str,
    ) -> Result<(Vec<CommitOutcome>, Vec<Taken>), DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut broken: Vec<&str> = Vec::new();
        for c in commits {
            let run = c.lease.run_id.as_str();
            let changes = c.step.context.is_some();
            let outcome = if changes && broken.contains(&run) {
                let current: i64 = tx
                    .query_one("SELECT version FROM runs WHERE run_id = $1", &[&run])
                    .await
                    .map_err(backend)?
                    .get(0);
                CommitOutcome::ContextConflict {
                    current: current as u64,
                }
            } else {
                commit_one(&tx, c, request).await?
            };
            if changes && !matches!(outcome, CommitOutcome::Committed { .. }) {
                broken.push(run);
            }
            outcomes.push(outcome);
        }
        let taken = match next {
            Some(take) => take_in(&tx, take).await?,
            None => Vec::new(),
        };
        tx.commit().await.map_err(backend)?;
        Ok((outcomes, taken))
    }
}

/// The take, inside `tx`.
async fn take_in(
    tx: &Transaction<'_>,
    take: TakeRequest<'_>,
) -> Result<Vec<Taken>, DistributedError> {
    let rows = tx
        .query(
            "SELECT i.run_id, replace(i.item_id::text, '-', ''), i.node, i.payload, i.attempt, \
                    i.deliveries, r.status, r.deadline, r.context, r.version, r.workflow \
             FROM items i JOIN runs r ON r.run_id = i.run_id \
             WHERE i.workflow = $1 AND i.state IN ('P', 'I', 'R') AND i.due_at <= now() \
             ORDER BY i.due_at, i.seq LIMIT $2 \
             FOR UPDATE OF i SKIP LOCKED",
            &[&take.workflow, &(take.max.min(MAX_BATCH) as i64)],
        )
        .await
        .map_err(backend)?;
    let lease_ms = take.options.lease_timeout.as_millis() as f64;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let run_id: String = row.get(0);
        let id_text: &str = row.get(1);
        let id = item_id(id_text)?;
        let run_status = status(row.get(6))?;
        if !machine::accepts_results(run_status) {
            tx.execute(
                "DELETE FROM items WHERE run_id = $1 AND item_id = $2::text::uuid",
                &[&run_id, &id_text],
            )
            .await
            .map_err(backend)?;
            continue;
        }
        if !machine::takes_items(run_status) {
            park(tx, &run_id, id_text).await?;
            continue;
        }
        let deliveries: i32 = row.get(5);
        if deliveries as u32 >= take.options.max_deliveries {
            let error = format!(
                "poison item: delivered {deliveries} times without a commit (limit {})",
                take.options.max_deliveries
            );
            poison(tx, &run_id, id_text, &error).await?;
            continue;
        }
        let leased = tx
            .query_one(
                "UPDATE items SET state = 'I', token = token + 1, deliveries = deliveries + 1, \
                 due_at = now() + make_interval(secs => $3::float8 / 1000), worker = $4 \
                 WHERE run_id = $1 AND item_id = $2::text::uuid RETURNING token",
                &[&run_id, &id_text, &lease_ms, &take.worker.as_str()],
            )
            .await
            .map_err(backend)?;
        if run_status == RunStatus::Pending {
            tx.execute(
                "UPDATE runs SET status = 'running' WHERE run_id = $1 AND status = 'pending'",
                &[&run_id],
            )
            .await
            .map_err(backend)?;
        }
        let token: i64 = leased.get(0);
        let version: i64 = row.get(9);
        let attempt: i32 = row.get(4);
        out.push(
            Taken::new(
                Lease::new(run_id, id, token as u64, take.worker.clone()),
                row.get::<_, String>(2),
                row.get::<_, Vec<u8>>(3),
            )
            .with_attempt(attempt as u32, deliveries as u32 + 1)
            .with_deadline(row.get(7))
            .with_context(Some(VersionedContext::new(row.get(8), version as u64))),
        );
    }
    Ok(out)
}

/// Parks an item of a paused or failed run (a resume makes it ready again).
async fn park(tx: &Transaction<'_>, run_id: &str, id: &str) -> Result<(), DistributedError> {
    tx.execute(
        "UPDATE items SET state = 'K' WHERE run_id = $1 AND item_id = $2::text::uuid",
        &[&run_id, &id],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "UPDATE runs SET parked = parked + 1 WHERE run_id = $1",
        &[&run_id],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Dead-letters a poison item, records the error and fails its run.
async fn poison(
    tx: &Transaction<'_>,
    run_id: &str,
    id: &str,
    error: &str,
) -> Result<(), DistributedError> {
    tx.execute(
        "WITH gone AS (DELETE FROM items WHERE run_id = $1 AND item_id = $2::text::uuid \
                       RETURNING run_id, item_id, node, payload, attempt) \
         INSERT INTO dead_letters (run_id, item_id, node, payload, error, attempt) \
         SELECT run_id, item_id, node, payload, $3, attempt FROM gone",
        &[&run_id, &id, &error],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "UPDATE runs SET outstanding = outstanding - 1, status = 'failed', error = $2, \
         finished_at = coalesce(finished_at, now()) WHERE run_id = $1",
        &[&run_id, &error],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Applies or refuses one step inside `tx`.
async fn commit_one(
    tx: &Transaction<'_>,
    c: &CommitItem<'_>,
    request: &str,
) -> Result<CommitOutcome, DistributedError> {
    let lease = c.lease;
    let step = c.step;
    let id = lease.item_id.to_string();
    // The fence: the item, still leased under this token (locked before its run).
    let item = tx
        .query_opt(
            "SELECT token, state FROM items WHERE run_id = $1 AND item_id = $2::text::uuid \
             FOR UPDATE",
            &[&lease.run_id, &id],
        )
        .await
        .map_err(backend)?;
    let run = tx
        .query_opt(
            "SELECT status, version, outstanding, output IS NOT NULL, workflow, parked \
             FROM runs WHERE run_id = $1 FOR UPDATE",
            &[&lease.run_id],
        )
        .await
        .map_err(backend)?;
    let Some(run) = run else {
        return Ok(CommitOutcome::LeaseLost);
    };
    let run_status = status(run.get(0))?;
    let held = item.is_some_and(|row| {
        row.get::<_, i64>(0) as u64 == lease.token && row.get::<_, i8>(1) == b'I' as i8
    });
    if !held {
        // A retry of a request that applied the step gets the same answer.
        let done = tx
            .query_opt(
                "SELECT request FROM done_items WHERE run_id = $1 AND item_id = $2::text::uuid",
                &[&lease.run_id, &id],
            )
            .await
            .map_err(backend)?;
        if done.is_some_and(|row| row.get::<_, &str>(0) == request) {
            return Ok(CommitOutcome::Committed { finished: None });
        }
        if !machine::accepts_results(run_status) {
            return Ok(CommitOutcome::RunInactive(run_status));
        }
        return Ok(CommitOutcome::LeaseLost);
    }
    if !machine::accepts_results(run_status) {
        tx.execute(
            "DELETE FROM items WHERE run_id = $1 AND item_id = $2::text::uuid",
            &[&lease.run_id, &id],
        )
        .await
        .map_err(backend)?;
        return Ok(CommitOutcome::RunInactive(run_status));
    }
    let version: i64 = run.get(1);
    let version = version as u64;
    if step.require_version.is_some_and(|v| v != version)
        || step
            .context
            .as_ref()
            .is_some_and(|(base, _)| *base != version)
    {
        return Ok(CommitOutcome::ContextConflict { current: version });
    }
    // Applied: the item leaves the hot table; its successors come in (known ids are not
    // created again).
    tx.execute(
        "DELETE FROM items WHERE run_id = $1 AND item_id = $2::text::uuid",
        &[&lease.run_id, &id],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "INSERT INTO done_items (run_id, item_id, request) VALUES ($1, $2::text::uuid, $3) \
         ON CONFLICT DO NOTHING",
        &[&lease.run_id, &id, &request],
    )
    .await
    .map_err(backend)?;
    let workflow: &str = run.get(4);
    let ready = machine::takes_items(run_status);
    let mut fresh = 0i32;
    for s in &step.successors {
        let added = tx
            .execute(
                "INSERT INTO items (run_id, item_id, workflow, node, payload, state) \
                 SELECT $1::text, $2::text::uuid, $3::text, $4::text, $5::bytea, $6::\"char\" \
                 WHERE NOT EXISTS (SELECT 1 FROM done_items \
                                   WHERE run_id = $1 AND item_id = $2::text::uuid) \
                 ON CONFLICT DO NOTHING",
                &[
                    &lease.run_id,
                    &s.id.to_string(),
                    &workflow,
                    &s.node,
                    &s.bytes,
                    &(if ready { b'P' } else { b'K' } as i8),
                ],
            )
            .await
            .map_err(backend)?;
        fresh += added as i32;
    }
    for output in &step.outputs {
        tx.execute(
            "INSERT INTO outputs (run_id, value) VALUES ($1, $2::text::jsonb)",
            &[&lease.run_id, &output.to_string()],
        )
        .await
        .map_err(backend)?;
    }
    for failure in &step.handled_failures {
        let json = serde_json_string(failure)?;
        tx.execute(
            "INSERT INTO errors (run_id, error) VALUES ($1, $2::text::jsonb)",
            &[&lease.run_id, &json],
        )
        .await
        .map_err(backend)?;
    }
    let outstanding: i32 = run.get(2);
    let outstanding = outstanding + fresh - 1;
    let has_output = run.get::<_, bool>(3) || !step.outputs.is_empty();
    let after = machine::after_commit(RunState {
        status: run_status,
        outstanding: outstanding.max(0) as u64,
        has_output,
    });
    let finished = (after != run_status && after.is_finished()).then_some(after);
    let (context, new_version) = match &step.context {
        Some((_, bytes)) => (Some(bytes.as_slice()), version as i64 + 1),
        None => (None, version as i64),
    };
    let first_output = step.outputs.first().map(ToString::to_string);
    let error = (finished == Some(RunStatus::Failed)).then(|| no_output(workflow));
    tx.execute(
        "UPDATE runs SET status = $2, outstanding = $3, version = $4, \
         context = coalesce($5, context), output = coalesce(output, $6::text::jsonb), \
         error = coalesce($7, error), \
         finished_at = CASE WHEN $8 THEN now() ELSE finished_at END, \
         steps_done = steps_done + 1, items_created = items_created + $9, \
         parked = parked + $10 \
         WHERE run_id = $1",
        &[
            &lease.run_id,
            &after.to_string(),
            &outstanding,
            &new_version,
            &context,
            &first_output,
            &error,
            &finished.is_some(),
            &i64::from(fresh),
            &(if ready { 0 } else { fresh }),
        ],
    )
    .await
    .map_err(backend)?;
    Ok(CommitOutcome::Committed { finished })
}

/// A handled failure as stored JSON.
fn serde_json_string(failure: &WorkflowError) -> Result<String, DistributedError> {
    serde_json::to_string(failure).map_err(|e| DistributedError::Codec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use floxide_core::distributed::{NewItem, StepCommit, TakeOptions, WorkerId};

    use super::*;
    use crate::testing::PostgresServer;

    async fn setup() -> (PostgresServer, PostgresBackend) {
        let server = PostgresServer::start_or_panic();
        let backend = PostgresBackend::connect(server.url()).await.unwrap();
        (server, backend)
    }

    fn options(lease_ms: u64, max_deliveries: u32) -> TakeOptions {
        TakeOptions {
            lease_timeout: Duration::from_millis(lease_ms),
            max_deliveries,
        }
    }

    fn start(run: &str) -> StartRun {
        StartRun::new(
            run,
            "Flow",
            b"{}".to_vec(),
            NewItem::new(ItemId::from_u128(1), "a", b"1".to_vec()),
        )
    }

    async fn take(
        backend: &PostgresBackend,
        worker: &WorkerId,
        opts: TakeOptions,
        max: usize,
    ) -> Vec<Taken> {
        backend
            .take_now(TakeRequest::new("Flow", worker, opts).with_max(max))
            .await
            .unwrap()
    }

    async fn commit(
        backend: &PostgresBackend,
        lease: &Lease,
        step: &StepCommit,
        request: &str,
    ) -> CommitOutcome {
        let (outcomes, _) = backend
            .commit_now(&[CommitItem::new(lease, step)], None, request)
            .await
            .unwrap();
        outcomes[0].clone()
    }

    async fn run_row(backend: &PostgresBackend, run: &str) -> (String, i32, Option<String>) {
        let client = backend.pooled().await.unwrap();
        let row = client
            .query_one(
                "SELECT status, outstanding, output::text FROM runs WHERE run_id = $1",
                &[&run],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_goes_from_its_start_to_its_output() {
        let (_server, backend) = setup().await;
        backend.start_run_as(&start("r1"), "q1").await.unwrap();
        let me = WorkerId::from("w");
        let first = take(&backend, &me, options(30_000, 5), 4).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].node, "a");
        assert_eq!(first[0].context.as_ref().map(|c| c.version), Some(0));
        assert_eq!(run_row(&backend, "r1").await.0, "running");
        let mut step = StepCommit::new("a");
        step.context = Some((0, b"{\"n\":1}".to_vec()));
        step.successors
            .push(NewItem::new(ItemId::from_u128(2), "b", b"2".to_vec()));
        let outcome = commit(&backend, &first[0].lease, &step, "q2").await;
        assert_eq!(outcome, CommitOutcome::Committed { finished: None });
        let second = take(&backend, &me, options(30_000, 5), 4).await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].node, "b");
        let context = second[0].context.clone().unwrap();
        assert_eq!((context.version, context.bytes), (1, b"{\"n\":1}".to_vec()));
        let mut last = StepCommit::new("b");
        last.outputs.push(serde_json::json!(42));
        let outcome = commit(&backend, &second[0].lease, &last, "q3").await;
        assert_eq!(
            outcome,
            CommitOutcome::Committed {
                finished: Some(RunStatus::Completed)
            }
        );
        assert_eq!(
            run_row(&backend, "r1").await,
            ("completed".to_owned(), 0, Some("42".to_owned()))
        );
        // The retried commit (same request) answers as the first; another is refused.
        let again = commit(&backend, &second[0].lease, &last, "q3").await;
        assert!(
            matches!(again, CommitOutcome::Committed { .. }),
            "{again:?}"
        );
        let other = commit(&backend, &second[0].lease, &last, "q4").await;
        assert_eq!(other, CommitOutcome::RunInactive(RunStatus::Completed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_are_idempotent_by_request_and_unique_by_id_and_key() {
        let (_server, backend) = setup().await;
        backend.start_run_as(&start("r1"), "q1").await.unwrap();
        backend
            .start_run_as(&start("r1"), "q1")
            .await
            .expect("a retried start is its own");
        let again = backend.start_run_as(&start("r1"), "q2").await.unwrap_err();
        assert!(matches!(again, DistributedError::RunExists(_)), "{again}");
        let keyed = |run: &str| start(run).with_idempotency_key(Some("order-7".to_owned()));
        backend.start_run_as(&keyed("r2"), "q3").await.unwrap();
        match backend.start_run_as(&keyed("r3"), "q4").await.unwrap_err() {
            DistributedError::DuplicateRun { key, existing } => {
                assert_eq!((key.as_str(), existing.as_str()), ("order-7", "r2"));
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_is_reclaimed_and_the_stale_commit_is_refused() {
        let (_server, backend) = setup().await;
        backend.start_run_as(&start("r1"), "q1").await.unwrap();
        let (w1, w2) = (WorkerId::from("w1"), WorkerId::from("w2"));
        let first = take(&backend, &w1, options(200, 5), 1).await;
        assert_eq!(first.len(), 1);
        assert!(take(&backend, &w2, options(200, 5), 1).await.is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        let second = take(&backend, &w2, options(30_000, 5), 1).await;
        assert_eq!(second.len(), 1, "the expired lease is reclaimed");
        assert_eq!(second[0].lease.item_id, first[0].lease.item_id);
        assert!(second[0].lease.token > first[0].lease.token);
        assert_eq!(second[0].deliveries, 2);
        let step = StepCommit::new("a");
        assert_eq!(
            commit(&backend, &first[0].lease, &step, "q2").await,
            CommitOutcome::LeaseLost,
            "G2: the stale lease does not commit"
        );
        assert!(matches!(
            commit(&backend, &second[0].lease, &step, "q3").await,
            CommitOutcome::Committed { .. }
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn context_changes_are_fenced_by_version_and_chained_in_a_batch() {
        let (_server, backend) = setup().await;
        backend.start_run_as(&start("r1"), "q1").await.unwrap();
        let me = WorkerId::from("w");
        let first = take(&backend, &me, options(30_000, 5), 1).await;
        let mut spread = StepCommit::new("a");
        for k in 10..13 {
            spread
                .successors
                .push(NewItem::new(ItemId::from_u128(k), "b", b"0".to_vec()));
        }
        commit(&backend, &first[0].lease, &spread, "q2").await;
        let leaves = take(&backend, &me, options(30_000, 5), 8).await;
        assert_eq!(leaves.len(), 3);
        let change = |base: u64, tag: &str| {
            let mut step = StepCommit::new("b");
            step.context = Some((base, tag.as_bytes().to_vec()));
            step
        };
        let other = change(0, "\"other\"");
        assert!(matches!(
            commit(&backend, &leaves[0].lease, &other, "q3").await,
            CommitOutcome::Committed { .. }
        ));
        // A stale change, then one joined onto it: both refused.
        let (stale, joined) = (change(0, "\"stale\""), change(1, "\"joined\""));
        let (outcomes, _) = backend
            .commit_now(
                &[
                    CommitItem::new(&leaves[1].lease, &stale),
                    CommitItem::new(&leaves[2].lease, &joined),
                ],
                None,
                "q4",
            )
            .await
            .unwrap();
        assert_eq!(outcomes[0], CommitOutcome::ContextConflict { current: 1 });
        assert_eq!(outcomes[1], CommitOutcome::ContextConflict { current: 1 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_delivered_too_often_is_dead_lettered_and_fails_its_run() {
        let (_server, backend) = setup().await;
        backend.start_run_as(&start("r1"), "q1").await.unwrap();
        let me = WorkerId::from("w");
        for _ in 0..2 {
            assert_eq!(take(&backend, &me, options(100, 2), 1).await.len(), 1);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(take(&backend, &me, options(100, 2), 1).await.is_empty());
        let (status, outstanding, _) = run_row(&backend, "r1").await;
        assert_eq!((status.as_str(), outstanding), ("failed", 0));
        let client = backend.pooled().await.unwrap();
        let letter = client
            .query_one("SELECT error FROM dead_letters WHERE run_id = 'r1'", &[])
            .await
            .unwrap();
        assert!(letter.get::<_, &str>(0).contains("poison item"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takes_lease_each_item_once() {
        let (_server, backend) = setup().await;
        for i in 0..40 {
            backend
                .start_run_as(&start(&format!("r{i}")), &format!("q{i}"))
                .await
                .unwrap();
        }
        let takers = (0..4).map(|w| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let me = WorkerId::from(format!("w{w}").as_str());
                let mut got = Vec::new();
                loop {
                    let batch = take(&backend, &me, options(30_000, 5), 3).await;
                    if batch.is_empty() {
                        break got;
                    }
                    got.extend(batch.into_iter().map(|t| t.lease.run_id));
                }
            })
        });
        let mut all: Vec<String> = Vec::new();
        for taker in futures_util::future::join_all(takers).await {
            all.extend(taker.unwrap());
        }
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(
            (before, all.len()),
            (40, 40),
            "every item leased exactly once"
        );
    }
}
