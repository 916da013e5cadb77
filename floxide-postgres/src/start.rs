//! Starting runs: one statement inserts a chunk of runs with their first items and wakes idle
//! takers. A start that inserted nothing (the same run id or idempotency key exists, or a
//! retried request) is answered by the transaction of `ops::start`, which tells them apart.

use floxide_core::distributed::{DistributedError, RunId, RunStatus, StartRun};

use crate::ops::{self, backend};
use crate::worker::request_id;
use crate::PostgresBackend;

/// Runs per statement.
const CHUNK: usize = 500;

/// `$1`–`$5` the runs (id, workflow, context, deadline, idempotency key), `$6` pending, `$7`
/// the request, `$8`–`$10` their first items (id, node, payload; the payload is also kept as
/// the run's input), `$11` the work channel.
const START: &str = "\
WITH started AS (
    INSERT INTO runs (run_id, workflow, status, context, outstanding, start_request, deadline,
                      idempotency_key, input)
    SELECT u.id, u.wf, $6, u.ctx, 1, $7, u.deadline, u.key, u.input
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[], $5::text[], $10::bytea[])
        AS u(id, wf, ctx, deadline, key, input)
    ON CONFLICT DO NOTHING
    RETURNING run_id, workflow),
first AS (
    INSERT INTO items (run_id, item_id, workflow, node, payload, state)
    SELECT s.run_id, u.item::uuid, s.workflow, u.node, u.payload, 'P'
    FROM unnest($1::text[], $8::text[], $9::text[], $10::bytea[]) AS u(id, item, node, payload)
    JOIN started s ON s.run_id = u.id)
SELECT run_id, pg_notify($11, '') FROM started";

impl PostgresBackend {
    /// Starts `starts`, one answer each, in order.
    pub(crate) async fn start_many(
        &self,
        starts: Vec<StartRun>,
    ) -> Vec<Result<RunId, DistributedError>> {
        let mut out = Vec::with_capacity(starts.len());
        let mut rest = starts.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<StartRun> = rest.by_ref().take(CHUNK).collect();
            match self.start_chunk(&chunk).await {
                Ok(answers) => out.extend(answers),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    async fn start_chunk(
        &self,
        chunk: &[StartRun],
    ) -> Result<Vec<Result<RunId, DistributedError>>, DistributedError> {
        let request = request_id();
        let inserted: std::collections::HashSet<String> = {
            let client = self.pooled().await?;
            let statement = client.prepare_cached(START).await.map_err(backend)?;
            let ids: Vec<&str> = chunk.iter().map(|s| s.run_id.as_str()).collect();
            let workflows: Vec<&str> = chunk.iter().map(|s| s.workflow.as_str()).collect();
            let contexts: Vec<&[u8]> = chunk.iter().map(|s| s.context.as_slice()).collect();
            let deadlines: Vec<Option<std::time::SystemTime>> =
                chunk.iter().map(|s| s.deadline).collect();
            let keys: Vec<Option<&str>> =
                chunk.iter().map(|s| s.idempotency_key.as_deref()).collect();
            let items: Vec<String> = chunk.iter().map(|s| s.first.id.to_string()).collect();
            let nodes: Vec<&str> = chunk.iter().map(|s| s.first.node.as_str()).collect();
            let payloads: Vec<&[u8]> = chunk.iter().map(|s| s.first.bytes.as_slice()).collect();
            let (work, _) = crate::listen::channels(self.config().schema());
            let rows = client
                .query(
                    &statement,
                    &[
                        &ids,
                        &workflows,
                        &contexts,
                        &deadlines,
                        &keys,
                        &RunStatus::Pending.to_string(),
                        &request,
                        &items,
                        &nodes,
                        &payloads,
                        &work,
                    ],
                )
                .await;
            match rows {
                Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
                // A run id or key over an index's limit refuses the whole statement: each
                // run is then started on its own, and only the offending ones are refused.
                Err(e) if ops::is_over_limit(&e) => Default::default(),
                Err(e) => return Err(backend(e)),
            }
        };
        let mut answers = Vec::with_capacity(chunk.len());
        for start in chunk {
            if inserted.contains(&start.run_id) {
                answers.push(Ok(start.run_id.clone()));
            } else {
                answers.push(self.start_refused(start, &request).await);
            }
        }
        Ok(answers)
    }

    /// A start the statement did not insert: the error (run id or idempotency key taken or
    /// refused), or the run when a retried statement had inserted it or when the statement
    /// failed for another run of its chunk.
    async fn start_refused(
        &self,
        start: &StartRun,
        request: &str,
    ) -> Result<RunId, DistributedError> {
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(backend)?;
        ops::start(&tx, start, request).await?;
        ops::notify_work(&tx, self.config().schema()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(start.run_id.clone())
    }
}
