//! [`RedisBackend`]: the `Backend` trait on Redis, one Lua script per transition.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use floxide_core::distributed::{
    machine, Backend, CommitOutcome, DeadLetter, DistributedError, Lease, LeaseState, NextTake,
    NodeTiming, QueueStats, RunAction, RunId, RunInfo, RunMetrics, RunStatus, RunWatch, StartRun,
    StepCommit, StepFailed, TakeOptions, Taken, VersionedContext, WorkItemInfo, WorkItemStatus,
    WorkerHealth, WorkerId, WorkflowError,
};
use floxide_core::ItemId;
use redis::Value;

use crate::keys::Keys;
use crate::reply::{hash, malformed, ms_of, time_ms, Reply};
use crate::{RedisBackendError, RedisClient, RedisConfig};

/// The distributed backend on Redis: any number of worker processes on any number of machines
/// share one Redis (see the crate documentation for the guarantees and the key layout).
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: RedisClient,
}

/// A fresh request id: retries of one request send the same id, and the scripts answer a
/// retry of an applied request as they answered it the first time.
fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The fields of a run record that [`RunInfo`] shows (not the context).
const INFO_FIELDS: [&str; 9] = ["wf", "st", "t0", "t1", "out", "err", "idem", "dl", "nout"];

impl RedisBackend {
    /// Connects with default settings to `url`.
    ///
    /// # Errors
    /// See [`RedisClient::new`].
    pub async fn connect(url: &str) -> Result<Self, RedisBackendError> {
        Ok(RedisBackend::new(
            RedisClient::new(RedisConfig::new(url)).await?,
        ))
    }

    /// A backend over an existing client.
    pub fn new(client: RedisClient) -> Self {
        RedisBackend { client }
    }

    /// The client.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.client.inner.keys
    }

    /// The scripts' common arguments: partition prefix, retentions (ms), request id.
    fn invoke<'a>(
        &self,
        script: &'a redis::Script,
        key: String,
        pfx: &str,
        rid: &str,
    ) -> redis::ScriptInvocation<'a> {
        let config = &self.client.inner.config;
        let mut inv = script.key(key);
        inv.arg(pfx)
            .arg(config.retention.as_millis() as u64)
            .arg(config.letter_retention.as_millis() as u64)
            .arg(rid);
        inv
    }

    /// Runs a script (retried through the client's connection handling: the request id makes
    /// a retry of an applied write answer as the first attempt did).
    async fn script_reply(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Reply, DistributedError> {
        let value: Value = self
            .client
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Reply::from(value)
    }

    /// Runs one take in partition `pfx`: `Ok(taken)` or `Err(ms until something is due)`.
    async fn take_in(
        &self,
        pfx: &str,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        woken: bool,
    ) -> Result<Result<Taken, Option<u64>>, DistributedError> {
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(
            &scripts.take,
            Keys::queue(pfx, workflow),
            pfx,
            &request_id(),
        );
        inv.arg(workflow)
            .arg(worker.as_str())
            .arg(options.lease_timeout.as_millis() as u64)
            .arg(options.max_deliveries)
            .arg(1)
            .arg("")
            .arg(-1)
            .arg(if woken { "1" } else { "0" });
        let reply = self.script_reply(&inv).await?;
        Ok(parse_take(reply, worker, None)?.map(first))
    }

    /// [`take_in`](Self::take_in) in a task of its own, so that a caller that stops waiting
    /// (a worker shutting down drops its take) loses nothing: an item leased by a take whose
    /// caller is gone is released by the task.
    async fn take_detached(
        &self,
        pfx: &str,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        woken: bool,
    ) -> Result<Result<Taken, Option<u64>>, DistributedError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, pfx, workflow, worker) = (
            self.clone(),
            pfx.to_owned(),
            workflow.to_owned(),
            worker.clone(),
        );
        tokio::spawn(async move {
            let result = this.take_in(&pfx, &workflow, &worker, options, woken).await;
            if let Err(Ok(Ok(taken))) = tx.send(result) {
                if let Err(error) = this.release(&taken.lease).await {
                    tracing::warn!(%error, "could not release an item taken for a cancelled take; its lease will expire");
                }
            }
        });
        rx.await.unwrap_or_else(|_| {
            Err(DistributedError::Backend(
                "the take task ended without an answer".to_owned(),
            ))
        })
    }

    /// Waits on `workflow`'s wake lists of every partition at once (one blocking pop over
    /// all of them: no polling, whatever the number of partitions).
    async fn block(&self, workflow: &str, wait: Duration) -> Result<(), DistributedError> {
        let lists: Vec<String> = self
            .keys()
            .all()
            .map(|p| Keys::wake(&self.keys().partition(p), workflow))
            .collect();
        let mut conn = self
            .client
            .blocking_connection()
            .await
            .map_err(crate::reply::backend)?;
        let secs = wait.as_secs_f64().max(0.001);
        // A connection that died silently would block forever: bound the wait, and drop the
        // connection instead of reusing it when the server did not answer in time.
        let answered = tokio::time::timeout(
            wait + Duration::from_secs(2),
            redis::cmd("BLPOP")
                .arg(&lists)
                .arg(secs)
                .query_async::<Option<(String, String)>>(&mut conn),
        )
        .await;
        match answered {
            Ok(Ok(_)) => {
                self.client.give_back(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(crate::reply::backend(e)),
            Err(_) => Err(DistributedError::Backend(format!(
                "no answer from Redis to a blocking wait within {:?}",
                wait + Duration::from_secs(2)
            ))),
        }
    }

    /// Reads fields of a run's record (`None` for an unknown run).
    async fn run_fields(
        &self,
        run_id: &str,
        fields: &[&str],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>, DistributedError> {
        let key = Keys::run(&self.keys().partition_of_run(run_id), run_id);
        let key = &key;
        let values: Vec<Option<Vec<u8>>> = self
            .client
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(fields)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // Every record has a status.
        Ok(values
            .first()
            .is_some_and(Option::is_some)
            .then_some(values))
    }

    fn run_info_from(&self, run_id: &str, f: &[Option<Vec<u8>>], extra: Vec<Vec<u8>>) -> RunInfo {
        let text = |i: usize| {
            f.get(i)
                .and_then(Option::as_ref)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let number = |i: usize| text(i).and_then(|t| t.parse::<u64>().ok());
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        let output = f.get(4).and_then(Option::as_ref).and_then(|b| json(b));
        let mut outputs: Vec<serde_json::Value> = output.iter().cloned().collect();
        outputs.extend(extra.iter().filter_map(|b| json(b)));
        RunInfo {
            run_id: run_id.to_owned(),
            workflow: text(0).unwrap_or_default(),
            status: run_status_of(&text(1).unwrap_or_default()),
            started_at: time_ms(number(2).unwrap_or_default()),
            finished_at: number(3).map(time_ms),
            output,
            outputs,
            error: text(5),
            idempotency_key: text(6),
            deadline: number(7).map(time_ms),
        }
    }

    /// Every field of a run's item hash, by item.
    async fn items_of(&self, run_id: &str) -> Result<Vec<StoredItem>, DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let key = Keys::items(&pfx, run_id);
        let key = &key;
        let value: Value =
            self.client
                .run(|mut conn| async move {
                    redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                })
                .await?;
        let mut items: BTreeMap<ItemId, StoredItem> = BTreeMap::new();
        for (field, value) in hash(value) {
            let (id, part) = match field.split_once(':') {
                Some((id, part)) => (id.to_owned(), part.to_owned()),
                None => (field, String::new()),
            };
            let Ok(id) = id.parse::<ItemId>() else {
                continue;
            };
            let item = items.entry(id).or_insert_with(|| StoredItem {
                id,
                payload: None,
                meta: String::new(),
                worker: None,
            });
            match part.as_str() {
                "" => item.payload = Some(value),
                "m" => item.meta = String::from_utf8_lossy(&value).into_owned(),
                "w" => item.worker = Some(String::from_utf8_lossy(&value).into_owned()),
                _ => {}
            }
        }
        Ok(items.into_values().collect())
    }

    /// The status a run's record holds, for the items' states.
    async fn status_of(&self, run_id: &str) -> Result<RunStatus, DistributedError> {
        match self.run_fields(run_id, &["st"]).await? {
            Some(f) => Ok(run_status_of(&String::from_utf8_lossy(
                f[0].as_deref().unwrap_or_default(),
            ))),
            None => Err(DistributedError::UnknownRun(run_id.to_owned())),
        }
    }
}

/// One item as stored: its bytes (until committed), state and last worker.
#[derive(Debug)]
struct StoredItem {
    id: ItemId,
    payload: Option<Vec<u8>>,
    meta: String,
    worker: Option<String>,
}

impl StoredItem {
    /// `<state> <attempt> <deliveries> <token> <node> <request>`.
    fn parts(&self) -> (char, u32, u32, &str) {
        let mut it = self.meta.split(' ');
        let state = it.next().and_then(|s| s.chars().next()).unwrap_or('X');
        let attempt = it.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        let deliveries = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let _token = it.next();
        (state, attempt, deliveries, it.next().unwrap_or_default())
    }

    /// The item's state; a ready item of a paused or failed run is held.
    fn status(&self, run: RunStatus) -> WorkItemStatus {
        match self.parts().0 {
            'P' if machine::takes_items(run) => WorkItemStatus::Pending,
            'P' if machine::accepts_results(run) => WorkItemStatus::Held,
            'I' => WorkItemStatus::InProgress,
            'R' => WorkItemStatus::WaitingRetry,
            'C' => WorkItemStatus::Completed,
            'F' => WorkItemStatus::PermanentlyFailed,
            _ => WorkItemStatus::Cancelled,
        }
    }
}

/// The first item of a take.
fn first(mut taken: Vec<Taken>) -> Taken {
    taken.swap_remove(0)
}

/// A take reply (see `lua/take.lua`): `Ok(items)` or `Err(ms until something is due)`
/// (`Some(0)`: call again at once).
/// `held` is the context the caller holds (bytes, version), for items whose context the
/// reply leaves out.
fn parse_take(
    r: Reply,
    worker: &WorkerId,
    held: Option<&VersionedContext>,
) -> Result<Result<Vec<Taken>, Option<u64>>, DistributedError> {
    if r.int(0) == Some(2) {
        // Nothing leased yet, but entries were left unexamined: due now.
        return Ok(Err(Some(0)));
    }
    if r.int(0) != Some(1) {
        let due = r.int(1).filter(|d| *d >= 0).map(|d| d as u64);
        return Ok(Err(due));
    }
    let count = r.int(1).unwrap_or_default().max(0) as usize;
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let b = 2 + k * 11;
        let item_id: ItemId = r.text(b + 1).parse().map_err(|_| malformed("item id"))?;
        let version = r.int(b + 10).unwrap_or_default() as u64;
        let context = if r.int(b + 8) == Some(1) {
            match held {
                Some(ctx) if ctx.version == version => Some(ctx.clone()),
                _ => None,
            }
        } else {
            Some(VersionedContext {
                bytes: r.bytes(b + 9),
                version,
            })
        };
        out.push(Taken {
            lease: Lease {
                run_id: r.text(b),
                item_id,
                token: r.int(b + 2).unwrap_or_default() as u64,
                worker: worker.clone(),
            },
            bytes: r.bytes(b + 3),
            node: r.text(b + 4),
            attempt: r.int(b + 5).unwrap_or(1) as u32,
            deliveries: r.int(b + 6).unwrap_or(1) as u32,
            deadline: r.text(b + 7).parse::<u64>().ok().map(time_ms),
            context,
        });
    }
    if out.is_empty() {
        return Ok(Err(Some(0)));
    }
    Ok(Ok(out))
}

fn run_status_of(text: &str) -> RunStatus {
    match text {
        "pending" => RunStatus::Pending,
        "running" => RunStatus::Running,
        "paused" => RunStatus::Paused,
        "completed" => RunStatus::Completed,
        "failed" => RunStatus::Failed,
        _ => RunStatus::Cancelled,
    }
}

fn commit_outcome(r: &Reply) -> Result<CommitOutcome, DistributedError> {
    match r.text(0).as_str() {
        "ok" => {
            let fin = r.text(1);
            Ok(CommitOutcome::Committed {
                finished: (!fin.is_empty()).then(|| run_status_of(&fin)),
            })
        }
        "conflict" => Ok(CommitOutcome::ContextConflict {
            current: r.int(1).unwrap_or_default() as u64,
        }),
        "lost" => Ok(CommitOutcome::LeaseLost),
        "inactive" => Ok(CommitOutcome::RunInactive(run_status_of(&r.text(1)))),
        other => Err(malformed(&format!("commit answered `{other}`"))),
    }
}

/// The text form of a stored payload.
fn payload_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("<{} bytes, not UTF-8>", bytes.len()),
    }
}

/// A dead letter as the scripts store it.
#[derive(serde::Deserialize)]
struct StoredLetter {
    run_id: String,
    item_id: String,
    node: String,
    error: String,
    deliveries: u32,
    attempt: u32,
    at: u64,
}

/// Node timings as the commit script keeps them: `<node> <count> <total µs> <max µs>;...`.
fn node_timings(text: &str) -> BTreeMap<String, NodeTiming> {
    text.split(';')
        .filter_map(|seg| {
            let mut it = seg.split(' ');
            let node = it.next().filter(|n| !n.is_empty())?;
            let mut number = || it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            let (count, total, max) = (number(), number(), number());
            Some((
                node.to_owned(),
                NodeTiming {
                    count,
                    total: Duration::from_micros(total),
                    max: Duration::from_micros(max),
                },
            ))
        })
        .collect()
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        // An idempotency key is checked in its own partition, so the run must live there:
        // a run id that would land elsewhere gets a suffix that moves it (the same one on every
        // try, so a retried start finds its run).
        let run_id = match &start.idempotency_key {
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
        };
        let pfx = self.keys().partition_of_run(&run_id);
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.start_run, Keys::runs(&pfx), &pfx, &request_id());
        inv.arg(&run_id)
            .arg(&start.workflow)
            .arg(&start.context)
            .arg(start.first.id.to_string())
            .arg(&start.first.node)
            .arg(&start.first.bytes)
            .arg(start.idempotency_key.as_deref().unwrap_or(""))
            .arg(
                start
                    .deadline
                    .map(|d| ms_of(d).to_string())
                    .unwrap_or_default(),
            );
        let r = self.script_reply(&inv).await?;
        match r.text(0).as_str() {
            "ok" => Ok(run_id),
            "exists" => Err(DistributedError::RunExists(run_id)),
            "dup" => Err(DistributedError::DuplicateRun {
                key: start.idempotency_key.unwrap_or_default(),
                existing: r.text(1),
            }),
            other => Err(malformed(&format!("start answered `{other}`"))),
        }
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
            let key = Keys::outputs(&self.keys().partition_of_run(run_id), run_id);
            let key = &key;
            self.client
                .run(|mut conn| async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                })
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

    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        // Wake only for this run's events (every run's changes are published).
        let inner = &self.client.inner;
        let mut rx = inner.version.subscribe();
        let since = *rx.borrow_and_update();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            rx.borrow_and_update();
            let recent = inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.touched_since(since, run_id) {
                return;
            }
        }
    }

    fn watch_runs(&self) -> RunWatch {
        RunWatch::new(self.client.inner.version.subscribe())
    }

    async fn take(
        &self,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
        wait: Duration,
    ) -> Result<Option<Taken>, DistributedError> {
        let started = tokio::time::Instant::now();
        let partitions = self.client.inner.config.partitions;
        let home = self.keys().partition_of(worker.as_str());
        let mut woken = false;
        loop {
            let mut next_due: Option<u64> = None;
            for k in 0..partitions {
                let pfx = self.keys().partition((home + k) % partitions);
                match self
                    .take_detached(&pfx, workflow, worker, options, woken)
                    .await?
                {
                    Ok(taken) => return Ok(Some(taken)),
                    Err(due) => {
                        next_due = match (next_due, due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    }
                }
            }
            // Entries left unexamined (a take examines a bounded number): go on at once.
            if next_due == Some(0) {
                continue;
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            let mut block = left;
            if let Some(due) = next_due {
                block = block.min(Duration::from_millis(due.max(1)));
            }
            self.block(workflow, block).await?;
            woken = true;
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.heartbeat, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(lease_timeout.as_millis() as u64);
        let r = self.script_reply(&inv).await?;
        Ok(match r.text(0).as_str() {
            "ok" => LeaseState::Active(run_status_of(&r.text(1))),
            _ => LeaseState::Lost,
        })
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        match self.run_fields(run_id, &["st", "ctx", "ver"]).await? {
            Some(f) => Ok(VersionedContext {
                bytes: f[1].clone().unwrap_or_default(),
                version: f[2]
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                    .unwrap_or_default(),
            }),
            None => Err(DistributedError::UnknownRun(run_id.to_owned())),
        }
    }

    async fn commit(
        &self,
        lease: &Lease,
        commit: StepCommit,
    ) -> Result<CommitOutcome, DistributedError> {
        Ok(self.commit_with(lease, commit, None).await?.0)
    }

    async fn commit_and_take(
        &self,
        lease: &Lease,
        commit: StepCommit,
        next: Option<NextTake<'_>>,
    ) -> Result<(CommitOutcome, Option<Taken>), DistributedError> {
        self.commit_with(lease, commit, next).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let record = WorkflowError {
            work_item: lease.item_id,
            node: failure.node.clone(),
            error: failure.error.clone(),
            attempt: 0, // filled in by the fail script
            handled: false,
            timestamp: SystemTime::now(),
        };
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.fail, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(
                serde_json::to_string(&record)
                    .map_err(|e| DistributedError::Codec(e.to_string()))?,
            )
            .arg(&failure.error)
            .arg(
                failure
                    .retry_after
                    .map(|d| (d.as_millis() as u64).to_string())
                    .unwrap_or_default(),
            );
        let r = self.script_reply(&inv).await?;
        commit_outcome(&r)
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.release, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token);
        self.script_reply(&inv).await?;
        Ok(())
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        self.status_of(run_id).await?;
        let key = Keys::errors(&self.keys().partition_of_run(run_id), run_id);
        let key = &key;
        let raw: Vec<Vec<u8>> = self
            .client
            .run(|mut conn| async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
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
        Ok(RunMetrics {
            total_work_items: number(1),
            completed: number(2),
            failed: number(3),
            retries: number(4),
            reclaimed: number(5),
            per_node: node_timings(&String::from_utf8_lossy(
                f[6].as_deref().unwrap_or_default(),
            )),
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
        for p in self.keys().all() {
            let key = Keys::dead_letters(&self.keys().partition(p));
            let key = &key;
            let value: Value = self
                .client
                .run(|mut conn| async move {
                    redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                })
                .await?;
            let fields = hash(value);
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
        let value: Value =
            self.client
                .run(|mut conn| async move {
                    redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                })
                .await?;
        let mut out: Vec<WorkerHealth> = hash(value)
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

impl RedisBackend {
    /// The commit script, also taking the worker's next item when `next` is given.
    async fn commit_with(
        &self,
        lease: &Lease,
        commit: StepCommit,
        next: Option<NextTake<'_>>,
    ) -> Result<(CommitOutcome, Option<Taken>), DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let scripts = &self.client.inner.scripts;
        let mut inv = self.invoke(&scripts.commit, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(
                commit
                    .require_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            );
        match &commit.context {
            Some((base, bytes)) => inv.arg(base.to_string()).arg(bytes.as_slice()),
            None => inv.arg("").arg(""),
        };
        inv.arg(&commit.node)
            .arg(commit.duration.as_micros() as u64);
        inv.arg(commit.successors.len());
        for s in &commit.successors {
            inv.arg(s.id.to_string())
                .arg(&s.node)
                .arg(s.bytes.as_slice());
        }
        inv.arg(commit.outputs.len());
        for o in &commit.outputs {
            inv.arg(o.to_string());
        }
        inv.arg(commit.handled_failures.len());
        for e in &commit.handled_failures {
            inv.arg(serde_json::to_string(e).map_err(|e| DistributedError::Codec(e.to_string()))?);
        }
        // The next take runs in the same script, within the run's partition (one hash tag per
        // script); when that partition has nothing ready the worker takes on its own.
        let fused = next;
        // The context this step leaves behind: takes of the same run at that version need
        // not send it back.
        let held = commit
            .context
            .as_ref()
            .map(|(base, bytes)| VersionedContext {
                bytes: bytes.clone(),
                version: base + 1,
            });
        match fused {
            Some(n) => inv
                .arg(n.workflow)
                .arg(n.worker.as_str())
                .arg(n.options.lease_timeout.as_millis() as u64)
                .arg(n.options.max_deliveries)
                .arg(1)
                .arg("0")
                .arg(held.as_ref().map_or(-1, |h| h.version as i64)),
            None => inv.arg(""),
        };
        let mut r = self.script_reply(&inv).await?;
        let outcome = commit_outcome(&r)?;
        let taken = match (fused, r.0.get_mut(2).map(std::mem::take)) {
            (Some(n), Some(value)) => parse_take(Reply::from(value)?, n.worker, held.as_ref())?
                .ok()
                .map(first),
            _ => None,
        };
        Ok((outcome, taken))
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
