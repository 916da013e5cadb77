//! Runs page by page: the runs table read newest first (by its insertion sequence, indexed)
//! from the cursor on, the filters on the record in SQL; the node and text filters, which read
//! a run's items, outputs and errors, look at most at the query's scan budget of runs per page.

use floxide_core::distributed::{DistributedError, RunCursor, RunPage, RunQuery};

use crate::admin::{run_info_of, INFO};
use crate::ops::backend;
use crate::PostgresBackend;
use tokio_postgres::types::ToSql;

/// Whether run `r` has an item or an error at node `$N`.
fn node_filter(n: usize) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM items i WHERE i.run_id = r.run_id AND i.node = ${n}) \
          OR EXISTS (SELECT 1 FROM errors e WHERE e.run_id = r.run_id AND e.error->>'node' = ${n}))"
    )
}

/// Whether run `r` holds the text `$N` (lower case) in its id, input, output, error, outputs,
/// errors or items.
fn text_filter(n: usize) -> String {
    format!(
        "(strpos(lower(r.run_id), ${n}) > 0 \
          OR strpos(lower(encode(coalesce(r.input, ''::bytea), 'escape')), ${n}) > 0 \
          OR strpos(lower(coalesce(r.output::text, '')), ${n}) > 0 \
          OR strpos(lower(coalesce(r.error, '')), ${n}) > 0 \
          OR EXISTS (SELECT 1 FROM outputs o WHERE o.run_id = r.run_id \
                     AND strpos(lower(o.value::text), ${n}) > 0) \
          OR EXISTS (SELECT 1 FROM errors e WHERE e.run_id = r.run_id \
                     AND strpos(lower(e.error->>'error'), ${n}) > 0) \
          OR EXISTS (SELECT 1 FROM items i WHERE i.run_id = r.run_id \
                     AND strpos(lower(encode(i.payload, 'escape')), ${n}) > 0))"
    )
}

/// A query's parameters, numbered as they are added. The sessions use generic plans, which
/// cannot leave out a `$n IS NULL OR …` condition, so a query names only the filters given.
#[derive(Default)]
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    /// Adds `value`; returns its number (`$n`).
    fn add(&mut self, value: impl ToSql + Sync + Send + 'static) -> usize {
        self.0.push(Box::new(value));
        self.0.len()
    }

    fn as_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// `conditions` joined with `AND` (`TRUE` for none).
fn all_of(conditions: &[String]) -> String {
    if conditions.is_empty() {
        "TRUE".to_owned()
    } else {
        conditions.join(" AND ")
    }
}

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
        // The record's filters narrow the scan; the node and text filters judge the runs read.
        let mut params = Params::default();
        let mut scanned = Vec::new();
        if let Some(seq) = after {
            scanned.push(format!("r.seq < ${}", params.add(seq)));
        }
        if let Some(workflow) = &query.workflow {
            scanned.push(format!("r.workflow = ${}", params.add(workflow.clone())));
        }
        if let Some(status) = query.status {
            scanned.push(format!(
                "{} = ${}",
                crate::ops::run_status!(),
                params.add(status.to_string())
            ));
        }
        if let Some(t) = query.started_after {
            scanned.push(format!("r.started_at >= ${}", params.add(t)));
        }
        if let Some(t) = query.started_before {
            scanned.push(format!("r.started_at < ${}", params.add(t)));
        }
        let mut details = Vec::new();
        if let Some(node) = &query.node {
            details.push(node_filter(params.add(node.clone())));
        }
        if let Some(text) = &query.text {
            details.push(text_filter(params.add(text.to_lowercase())));
        }
        let sql = format!(
            "SELECT r.seq, {} FROM runs r WHERE {} ORDER BY r.seq DESC LIMIT ${}",
            all_of(&details),
            all_of(&scanned),
            params.add(scan)
        );
        let client = self.pooled().await?;
        let rows = client
            .query(&sql, &params.as_refs())
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
