//! Runs page by page: each partition's index of runs (a sorted set scored by start time in
//! ms) is read newest first from the cursor on, a chunk at a time, the partitions' chunks
//! merged; only the runs examined are read. Filters other than the start time are checked
//! on each run's record ([`RunQuery::matches`]), at most the query's scan budget per page.

use floxide_core::distributed::query::{millis, Pager};
use floxide_core::distributed::{AdminBackend, DistributedError, RunPage, RunQuery};

use crate::keys::Keys;
use crate::RedisBackend;

/// Index entries read per partition and round.
const CHUNK: usize = 200;

impl RedisBackend {
    pub(crate) async fn page_of_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        // Where to continue from: older than this (start ms, run id), strictly.
        let mut position = match &query.after {
            Some(cursor) => {
                let (ms, id) = cursor.start_and_id()?;
                Some((ms, id.to_owned()))
            }
            None => None,
        };
        let newest = query.started_before.map(millis);
        let oldest = query.started_after.map(millis).unwrap_or(0);
        let mut pager = Pager::new(query);
        loop {
            let chunk = self.older_than(position.as_ref(), newest, oldest).await?;
            let Some(last) = chunk.last().cloned() else {
                return Ok(pager.last_page());
            };
            for (_, run_id) in chunk {
                let info = match AdminBackend::run_info(self, &run_id).await {
                    Ok(info) => info,
                    // Gone with its retention since the index was read.
                    Err(DistributedError::UnknownRun(_)) => continue,
                    Err(e) => return Err(e),
                };
                if let Some(page) = pager.offer(self, info).await? {
                    return Ok(page);
                }
            }
            position = Some(last);
        }
    }

    /// Up to [`CHUNK`] index entries older than `position` (all partitions merged, newest
    /// first), started within `[oldest, newest]` ms.
    async fn older_than(
        &self,
        position: Option<&(u64, String)>,
        newest: Option<u64>,
        oldest: u64,
    ) -> Result<Vec<(u64, String)>, DistributedError> {
        let mut merged: Vec<(u64, String)> = Vec::new();
        for p in self.keys().all() {
            let key = Keys::runs(&self.keys().partition(p));
            let key = &key;
            // Runs that started in the cursor's own millisecond, after it in id order.
            if let Some((ms, id)) = position {
                if newest.is_none_or(|n| *ms <= n) && *ms >= oldest {
                    let same: Vec<String> = self
                        .client()
                        .run(|mut conn| async move {
                            redis::cmd("ZRANGEBYSCORE")
                                .arg(key)
                                .arg(*ms)
                                .arg(*ms)
                                .query_async(&mut conn)
                                .await
                        })
                        .await?;
                    merged.extend(same.into_iter().filter(|r| r < id).map(|r| (*ms, r)));
                }
            }
            let max = match (position, newest) {
                (Some((ms, _)), Some(n)) if n < *ms => n.to_string(),
                (Some((ms, _)), _) => format!("({ms}"),
                (None, Some(n)) => n.to_string(),
                (None, None) => "+inf".to_owned(),
            };
            let max = &max;
            let older: Vec<(String, f64)> = self
                .client()
                .run(|mut conn| async move {
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(key)
                        .arg(max)
                        .arg(oldest)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(CHUNK)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            merged.extend(older.into_iter().map(|(id, ms)| (ms as u64, id)));
        }
        merged.sort_by(|a, b| b.cmp(a));
        merged.dedup();
        merged.truncate(CHUNK);
        Ok(merged)
    }
}
