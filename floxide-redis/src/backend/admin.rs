//! The operator's side of [`RedisBackend`] ([`AdminBackend`]): starting runs (250 per script
//! call), inspecting them, controlling them, dead letters, graphs, queue statistics and
//! worker health.

use super::*;

#[async_trait::async_trait]
impl AdminBackend for RedisBackend {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        // Concurrent single starts of a partition share its start calls (see `starts.rs`).
        let run_id = self.placed_run_id(&start);
        let pfx = self.keys().partition_of_run(&run_id);
        self.start_queued(pfx, run_id, start).await
    }

    async fn start_runs(&self, starts: Vec<StartRun>) -> Vec<Result<RunId, DistributedError>> {
        // A script call stays within one partition (one cluster slot); the partitions' calls
        // are in flight at once.
        let count = starts.len();
        let mut groups: std::collections::BTreeMap<u32, Vec<(usize, RunId, StartRun)>> =
            std::collections::BTreeMap::new();
        for (i, start) in starts.into_iter().enumerate() {
            let run_id = self.placed_run_id(&start);
            let p = self.keys().partition_of(&run_id);
            groups.entry(p).or_default().push((i, run_id, start));
        }
        let sends = groups.into_values().map(|group| async move {
            let mut answers = Vec::with_capacity(group.len());
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                let (at, chunk): (Vec<usize>, Vec<(RunId, StartRun)>) = group
                    .by_ref()
                    .take(BULK_START_CALL)
                    .map(|(i, run_id, start)| (i, (run_id, start)))
                    .unzip();
                answers.extend(at.into_iter().zip(self.start_chunk(chunk).await));
            }
            answers
        });
        let mut out: Vec<Option<Result<RunId, DistributedError>>> =
            std::iter::repeat_with(|| None).take(count).collect();
        for (i, answer) in futures_util::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
        {
            out[i] = Some(answer);
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err(malformed("a start was not answered"))))
            .collect()
    }

    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        let Some(f) = self.run_fields(run_id, &INFO_FIELDS).await? else {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        };
        let more = f
            .get(8)
            .and_then(Option::as_ref)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        let extra: Vec<Vec<u8>> = if more > 0 {
            self.whole_list(&Keys::outputs(
                &self.keys().partition_of_run(run_id),
                run_id,
            ))
            .await?
        } else {
            Vec::new()
        };
        Ok(self.run_info_from(run_id, &f, extra))
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        let mut all: Vec<(u64, RunInfo)> = Vec::new();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let key = Keys::runs(&pfx);
            let key = &key;
            let ids: Vec<(String, f64)> = self
                .client
                .run(|mut conn| async move {
                    redis::cmd("ZREVRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            for (id, score) in ids {
                match self.run_info(&id).await {
                    Ok(info) if status.is_none_or(|s| info.status == s) => {
                        all.push((score as u64, info))
                    }
                    Ok(_) | Err(DistributedError::UnknownRun(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        all.sort_by_key(|(started, _)| std::cmp::Reverse(*started));
        Ok(all.into_iter().map(|(_, info)| info).collect())
    }

    async fn query_runs(&self, query: &RunQuery) -> Result<RunPage, DistributedError> {
        self.page_of_runs(query).await
    }

    async fn control(&self, run_id: &str, action: RunAction) -> Result<RunInfo, DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let verb = match action {
            RunAction::Cancel => "cancel",
            RunAction::Pause => "pause",
            RunAction::Resume => "resume",
        };
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.control, Keys::runs(&pfx), &pfx, &request_id());
        inv.arg(run_id).arg(verb);
        let r = self.script_reply(&inv).await?;
        self.may_have_work(run_id);
        match r.text(0).as_str() {
            "ok" => self.run_info(run_id).await,
            "unknown" => Err(DistributedError::UnknownRun(run_id.to_owned())),
            "invalid" => Err(DistributedError::InvalidRunState {
                run_id: run_id.to_owned(),
                status: run_status_of(&r.text(1)),
                // The script names a refusal more precisely than the verb when it can.
                action: if r.text(2) == machine::NOTHING_TO_RESUME {
                    machine::NOTHING_TO_RESUME
                } else {
                    verb
                },
            }),
            other => Err(malformed(&format!("control answered `{other}`"))),
        }
    }

    fn watch_runs(&self) -> RunWatch {
        RunWatch::new(self.client.inner.version.subscribe())
    }

    fn watch_run(&self, run_id: &str) -> RunWatch {
        self.client.inner.signals.watch(run_id)
    }

    fn heard_output(&self, run_id: &str) -> Option<Vec<u8>> {
        self.client.inner.heard.get(run_id)
    }

    async fn run_input(&self, run_id: &str) -> Result<Option<Vec<u8>>, DistributedError> {
        let key = Keys::run(&self.keys().partition_of_run(run_id), run_id);
        let key = &key;
        let (exists, input): (Option<String>, Option<Vec<u8>>) = self
            .client
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("st")
                    .arg("inp")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        match exists {
            Some(_) => Ok(input),
            None => Err(DistributedError::UnknownRun(run_id.to_owned())),
        }
    }

    async fn step_history(&self, run_id: &str) -> Result<Option<Vec<StepEvent>>, DistributedError> {
        self.history_of(run_id).await.map(Some)
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        self.status_of(run_id).await?;
        let raw = self
            .whole_list(&Keys::errors(&self.keys().partition_of_run(run_id), run_id))
            .await?;
        Ok(raw
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect())
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        let fields = [
            "st",
            "m_items",
            "m_done",
            "m_failed",
            "m_retries",
            "m_reclaimed",
            "nt",
        ];
        let Some(f) = self.run_fields(run_id, &fields).await? else {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        };
        let number = |i: usize| {
            f[i].as_deref()
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let nt = f[6].as_deref().map(String::from_utf8_lossy);
        Ok(RunMetrics {
            // (A new run's record leaves out its one item made: see `lua/start_run.lua`.)
            total_work_items: if f[1].is_none() { 1 } else { number(1) },
            completed: steps_done(Some(number(2)), nt.as_deref()),
            failed: number(3),
            retries: number(4),
            reclaimed: number(5),
            per_node: node_timings(nt.as_deref().unwrap_or_default()),
        })
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        let status = self.status_of(run_id).await?;
        Ok(self
            .items_of(run_id)
            .await?
            .into_iter()
            .map(|item| {
                let (_, attempt, deliveries, node) = item.parts();
                WorkItemInfo {
                    item_id: item.id,
                    node: node.to_owned(),
                    status: item.status(status),
                    attempt,
                    deliveries,
                    worker: (item.parts().0 == 'I')
                        .then(|| item.worker.clone().map(WorkerId))
                        .flatten(),
                    payload: item
                        .payload
                        .as_deref()
                        .map(payload_text)
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        let status = self.status_of(run_id).await?;
        if !machine::accepts_results(status) {
            return Ok(Vec::new());
        }
        Ok(self
            .items_of(run_id)
            .await?
            .into_iter()
            .filter(|item| matches!(item.parts().0, 'P' | 'I' | 'R'))
            .filter_map(|item| item.payload)
            .collect())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        let mut out = Vec::new();
        let retention = self.client.config().dead_letter_retention();
        let now = SystemTime::now();
        for p in self.keys().all() {
            let fields = self
                .whole_hash(&Keys::dead_letters(&self.keys().partition(p)))
                .await?;
            for (field, raw) in &fields {
                if field.ends_with(":p") {
                    continue;
                }
                let Ok(letter) = serde_json::from_slice::<StoredLetter>(raw) else {
                    continue;
                };
                let payload = fields
                    .get(&format!("{field}:p"))
                    .map_or_else(|| "<missing>".to_owned(), |b| payload_text(b));
                let Ok(item_id) = letter.item_id.parse::<ItemId>() else {
                    continue;
                };
                // Past its retention: pruned by the scripts as new letters come.
                if time_ms(letter.at) + retention < now {
                    continue;
                }
                out.push(DeadLetter {
                    run_id: letter.run_id,
                    item_id,
                    node: letter.node,
                    error: letter.error,
                    deliveries: letter.deliveries,
                    attempt: letter.attempt,
                    at: time_ms(letter.at),
                    payload,
                });
            }
        }
        out.sort_by_key(|d| d.at);
        Ok(out)
    }

    async fn requeue_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        self.dead_letter_action(run_id, item_id, "requeue").await
    }

    async fn drop_dead_letter(
        &self,
        run_id: &str,
        item_id: ItemId,
    ) -> Result<(), DistributedError> {
        self.dead_letter_action(run_id, item_id, "drop").await
    }

    async fn register_graph(&self, graph: &WorkflowGraph) -> Result<(), DistributedError> {
        self.register_graph_here(graph).await
    }

    async fn graphs(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        self.graphs_here().await
    }

    async fn queue_stats(&self, workflow: &str) -> Result<Option<QueueStats>, DistributedError> {
        // Cheap counters for a periodic sample: the ready queue of `workflow` (it may hold a
        // few stale entries that takes skip), and the partition-wide timers (the first 10,000
        // of them) and dead letters (shared by every workflow of the deployment).
        let mut stats = QueueStats::default();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let pipe = {
                let mut pipe = redis::pipe();
                pipe.cmd("LLEN")
                    .arg(Keys::queue(&pfx, workflow))
                    .cmd("ZRANGE")
                    .arg(Keys::timers(&pfx))
                    .arg(0)
                    .arg(9999)
                    .cmd("HLEN")
                    .arg(Keys::dead_letters(&pfx))
                    .cmd("GET")
                    .arg(Keys::reclaimed(&pfx));
                pipe
            };
            let pipe = &pipe;
            let (ready, timers, dead, reclaimed): (u64, Vec<String>, u64, Option<u64>) = self
                .client
                .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?;
            stats.ready += ready;
            stats.in_flight += timers.iter().filter(|t| t.starts_with('L')).count() as u64;
            stats.delayed += timers.iter().filter(|t| t.starts_with('R')).count() as u64;
            stats.dead_letters += dead;
            stats.leases_reclaimed += reclaimed.unwrap_or(0);
        }
        Ok(Some(stats))
    }

    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        let json =
            serde_json::to_string(health).map_err(|e| DistributedError::Codec(e.to_string()))?;
        let key = self.keys().workers();
        let (key, json) = (&key, &json);
        self.client
            .run(|mut conn| async move {
                redis::cmd("HSET")
                    .arg(key)
                    .arg(health.worker_id.as_str())
                    .arg(json)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        let key = self.keys().workers();
        let key = &key;
        let mut out: Vec<WorkerHealth> = self
            .whole_hash(key)
            .await?
            .values()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect();
        // Reports older than the retention are of workers long gone: drop them, so the
        // hash does not grow with every worker id ever seen.
        let retention = self.client.inner.config.retention;
        let now = SystemTime::now();
        let (gone, live): (Vec<_>, Vec<_>) = out.into_iter().partition(|h| {
            now.duration_since(h.last_heartbeat)
                .is_ok_and(|d| d > retention)
        });
        if !gone.is_empty() {
            let ids: Vec<&str> = gone.iter().map(|h| h.worker_id.as_str()).collect();
            let ids = &ids;
            self.client
                .run(|mut conn| async move {
                    redis::cmd("HDEL")
                        .arg(key)
                        .arg(ids)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
        }
        out = live;
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(out)
    }
}

/// Starts sent in one script call by [`AdminBackend::start_runs`]. One call at a time per
/// partition: a call of 250 (~1.3 ms of the server's time) keeps workers draining a bulk start
/// supplied with less than half the round trips of one of 100, while a backlog stays small
/// enough to keep in the server's caches. (Measured side by side on the bulk workload: 100
/// per call 0.60-0.63 of the floor, 250 0.66-0.71; 500 and 1,000 no better than 250.)
pub(super) const BULK_START_CALL: usize = 250;

/// Concurrent single starts sent together in one script call (see `starts.rs`) at most: a
/// call of them stays short, as they wait for it.
pub(super) const START_BATCH: usize = 100;

/// The start script's answer for the run `run_id` that `start` asked for: `answer` and
/// `existing` as the script gave them for a run it did not start now (`None` for one it did).
fn start_answer(
    run_id: RunId,
    start: StartRun,
    answer: Option<(String, String)>,
) -> Result<RunId, DistributedError> {
    let Some((answer, existing)) = answer else {
        return Ok(run_id);
    };
    match answer.as_str() {
        "ok" => Ok(run_id),
        "exists" => Err(DistributedError::RunExists(run_id)),
        "dup" => Err(DistributedError::DuplicateRun {
            key: start.idempotency_key.unwrap_or_default(),
            existing,
        }),
        other => Err(malformed(&format!("start answered `{other}`"))),
    }
}

/// The answers of the start script's reply `r` to a call of `count` starts: for each start
/// it did not make now, by its place in the call (from 0), its answer and the existing run.
fn start_exceptions(
    r: &Reply,
    count: usize,
) -> Result<HashMap<usize, (String, String)>, DistributedError> {
    if r.int(0) != Some(count as i64) || (r.0.len() - 1) % 3 != 0 {
        return Err(malformed("the starts were not all answered"));
    }
    let mut out = HashMap::new();
    for at in (1..r.0.len()).step_by(3) {
        let place = r
            .int(at)
            .and_then(|p| usize::try_from(p).ok())
            .filter(|p| (1..=count).contains(p))
            .ok_or_else(|| malformed("a start's answer names no start of the call"))?;
        out.insert(place - 1, (r.text(at + 1), r.text(at + 2)));
    }
    Ok(out)
}

/// Whether two starts go in one group of the start script's call (see `lua/start_run.lua`):
/// the same workflow, context, first item id and node, and the same extras.
fn same_group(a: &StartRun, b: &StartRun) -> bool {
    a.workflow == b.workflow
        && a.context == b.context
        && a.first.id == b.first.id
        && a.first.node == b.first.node
        && a.idempotency_key.is_some() == b.idempotency_key.is_some()
        && a.deadline.is_some() == b.deadline.is_some()
}

impl RedisBackend {
    /// The id a run gets: an idempotency key is checked in its own partition, so the run must
    /// live there; a run id that would land elsewhere gets a suffix that moves it (the same
    /// one on every try, so a retried start finds its run).
    fn placed_run_id(&self, start: &StartRun) -> RunId {
        match &start.idempotency_key {
            Some(key)
                if self.keys().partition_of(key) != self.keys().partition_of(&start.run_id) =>
            {
                let home = self.keys().partition_of(key);
                (0u32..)
                    .map(|n| format!("{}-{n}", start.run_id))
                    .find(|id| self.keys().partition_of(id) == home)
                    .unwrap_or_else(|| start.run_id.clone())
            }
            _ => start.run_id.clone(),
        }
    }

    /// The start script's invocation for `start` under `run_id`, request `rid`.
    /// Starts `chunk` (each start under its placed run id; one partition) in one script call,
    /// retried as a whole: each start's request id makes a retry of an applied start answer
    /// as the first did.
    pub(super) async fn start_chunk(
        &self,
        chunk: Vec<(RunId, StartRun)>,
    ) -> Vec<Result<RunId, DistributedError>> {
        let Some((first, _)) = chunk.first() else {
            return Vec::new();
        };
        let pfx = self.keys().partition_of_run(first);
        let rid = request_id();
        let mut inv = self.invoke(
            &self.client.inner.scripts.start_run,
            Keys::runs(&pfx),
            &pfx,
            &rid,
        );
        // Runs in a row that share their workflow, context and first node go as one group.
        let mut at = 0;
        while let Some((_, head)) = chunk.get(at) {
            let k = chunk[at..]
                .iter()
                .take_while(|(_, s)| same_group(head, s))
                .count();
            let extras = match (head.idempotency_key.is_some(), head.deadline.is_some()) {
                (false, false) => "",
                (true, false) => "i",
                (false, true) => "d",
                (true, true) => "id",
            };
            inv.arg(k)
                .arg(&head.workflow)
                .arg(&head.context)
                .arg(head.first.id.to_string())
                .arg(&head.first.node)
                .arg(extras);
            for (run_id, start) in &chunk[at..at + k] {
                inv.arg(run_id).arg(&start.first.bytes);
                if let Some(key) = &start.idempotency_key {
                    inv.arg(key);
                }
                if let Some(deadline) = start.deadline {
                    inv.arg(ms_of(deadline).to_string());
                }
            }
            at += k;
        }
        let reply = self.script_reply(&inv).await;
        self.may_have_work(first);
        match reply.and_then(|r| start_exceptions(&r, chunk.len())) {
            Ok(mut exceptions) => chunk
                .into_iter()
                .enumerate()
                .map(|(n, (run_id, start))| start_answer(run_id, start, exceptions.remove(&n)))
                .collect(),
            Err(error) => chunk.iter().map(|_| Err(error.clone())).collect(),
        }
    }

    async fn dead_letter_action(
        &self,
        run_id: &str,
        item_id: ItemId,
        action: &str,
    ) -> Result<(), DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(
            &scripts.dead_letter,
            Keys::dead_letter_index(&pfx),
            &pfx,
            &request_id(),
        );
        inv.arg(run_id).arg(item_id.to_string()).arg(action);
        let r = self.script_reply(&inv).await?;
        self.may_have_work(run_id);
        match r.text(0).as_str() {
            "ok" => Ok(()),
            "expired" => Err(DistributedError::RunExpired(run_id.to_owned())),
            "invalid" => Err(DistributedError::InvalidRunState {
                run_id: run_id.to_owned(),
                status: run_status_of(&r.text(1)),
                action: "requeue a dead letter",
            }),
            _ => Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            }),
        }
    }
}
