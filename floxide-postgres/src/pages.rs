//! Runs page by page: the runs table read newest first (by its insertion sequence, indexed)
//! from the cursor on, the filters on the record in SQL; the node and text filters, which read
//! a run's items, outputs and errors, look at most at the query's scan budget of runs per page.

use floxide_core::distributed::{DistributedError, RunCursor, RunPage, RunQuery};

use crate::admin::{run_info_of, INFO};
use crate::ops::backend;
use crate::PostgresBackend;

/// Whether run `r` passes the node (`$7`) and text (`$8`, lower case) filters.
const DETAILS: &str = "($7::text IS NULL \
      OR EXISTS (SELECT 1 FROM items i WHERE i.run_id = r.run_id AND i.node = $7) \
      OR EXISTS (SELECT 1 FROM errors e WHERE e.run_id = r.run_id AND e.error->>'node' = $7)) \
    AND ($8::text IS NULL \
      OR strpos(lower(r.run_id), $8) > 0 \
      OR strpos(lower(encode(coalesce(r.input, ''::bytea), 'escape')), $8) > 0 \
      OR strpos(lower(coalesce(r.output::text, '')), $8) > 0 \
      OR strpos(lower(coalesce(r.error, '')), $8) > 0 \
      OR EXISTS (SELECT 1 FROM outputs o WHERE o.run_id = r.run_id \
                 AND strpos(lower(o.value::text), $8) > 0) \
      OR EXISTS (SELECT 1 FROM errors e WHERE e.run_id = r.run_id \
                 AND strpos(lower(e.error->>'error'), $8) > 0) \
      OR EXISTS (SELECT 1 FROM items i WHERE i.run_id = r.run_id \
                 AND strpos(lower(encode(i.payload, 'escape')), $8) > 0))";

impl PostgresBackend {
    pub(crate) async fn page_of_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        let limit = query.limit.max(1);
        let after: Option<i64> = match &query.after {
            Some(cursor) => Some(
                cursor
                    .as_str()
                    .parse()
                    .map_err(|_| DistributedError::InvalidCursor(cursor.to_string()))?,
            ),
            None => None,
        };
        // The record's filters alone: one more than a page tells whether another follows.
        let scan = if query.needs_details() {
            query.scan_budget.max(1)
        } else {
            limit.saturating_add(1)
        } as i64;
        let client = self.pooled().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT r.seq, {DETAILS} FROM runs r \
                     WHERE ($1::bigint IS NULL OR r.seq < $1) \
                       AND ($2::text IS NULL OR r.workflow = $2) \
                       AND ($3::text IS NULL OR r.status = $3) \
                       AND ($4::timestamptz IS NULL OR r.started_at >= $4) \
                       AND ($5::timestamptz IS NULL OR r.started_at < $5) \
                     ORDER BY r.seq DESC LIMIT $6"
                ),
                &[
                    &after,
                    &query.workflow,
                    &query.status.map(|s| s.to_string()),
                    &query.started_after,
                    &query.started_before,
                    &scan,
                    &query.node,
                    &query.text.as_ref().map(|t| t.to_lowercase()),
                ],
            )
            .await
            .map_err(backend)?;
        let hits: Vec<i64> = rows
            .iter()
            .filter(|row| row.get::<_, bool>(1))
            .map(|row| row.get(0))
            .collect();
        let next = if hits.len() > limit {
            Some(hits[limit - 1])
        } else if query.needs_details() && rows.len() as i64 == scan {
            rows.last().map(|row| row.get(0))
        } else {
            None
        };
        let shown = &hits[..hits.len().min(limit)];
        let rows = client
            .query(
                &format!("SELECT {INFO} FROM runs r WHERE r.seq = ANY($1) ORDER BY r.seq DESC"),
                &[&shown],
            )
            .await
            .map_err(backend)?;
        let runs = rows.iter().map(run_info_of).collect::<Result<_, _>>()?;
        Ok(RunPage::new(
            runs,
            next.map(|seq| RunCursor::new(seq.to_string())),
        ))
    }
}
