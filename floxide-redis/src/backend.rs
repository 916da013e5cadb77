//! [`RedisBackend`]: the `Backend` trait on Redis, one Lua script per transition.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use floxide_core::distributed::{
    machine, Backend, CommitOutcome, DeadLetter, DistributedError, Lease, LeaseState, NextTake,
    NodeTiming, QueueStats, RunAction, RunId, RunInfo, RunMetrics, RunStatus, RunWatch, StartRun,
    StepCommit, StepFailed, TakeOptions, Taken, VersionedContext, WorkItemInfo, WorkItemStatus,
    WorkerHealth, WorkerId, WorkflowError,
};
use floxide_core::ItemId;
use redis::{AsyncCommands, Value};

use crate::keys::Keys;
use crate::reply::{backend, field_text, field_u64, hash, malformed, ms_of, time_ms, Reply};
use crate::{RedisBackendError, RedisClient, RedisConfig};

/// The distributed backend on Redis: any number of worker processes on any number of machines
/// share one Redis (see the crate documentation for the guarantees and the key layout).
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: RedisClient,
}

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

    fn retention_secs(&self) -> u64 {
        self.client.inner.config.retention.as_secs().max(1)
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.client.connection()
    }

    /// Runs one take in partition `pfx`: `Ok(taken)` or `Err(ms until something is due)`.
    async fn take_in(
        &self,
        pfx: &str,
        workflow: &str,
        worker: &WorkerId,
        options: TakeOptions,
    ) -> Result<Result<Taken, Option<u64>>, DistributedError> {
        let reply = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .take
                    .key(Keys::ready(pfx, workflow))
                    .arg(pfx)
                    .arg(self.retention_secs())
                    .arg(workflow)
                    .arg(worker.as_str())
                    .arg(options.lease_timeout.as_millis() as u64)
                    .arg(options.max_deliveries),
            )
            .await?;
        parse_take(reply, worker)
    }

    /// Waits on `workflow`'s wake list of partition `pfx` (a blocking pop: no polling).
    async fn block(
        &self,
        pfx: &str,
        workflow: &str,
        wait: Duration,
    ) -> Result<(), DistributedError> {
        let mut conn = self.client.blocking_connection().await.map_err(backend)?;
        let secs = wait.as_secs_f64().max(0.001);
        // A connection that died silently would block forever: bound the wait, and drop the
        // connection instead of reusing it when the server did not answer in time.
        let answered = tokio::time::timeout(
            wait + Duration::from_secs(2),
            conn.blpop::<_, Option<(String, String)>>(Keys::wake(pfx, workflow), secs),
        )
        .await;
        match answered {
            Ok(Ok(_)) => {
                self.client.give_back(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(backend(e)),
            Err(_) => Err(DistributedError::Backend(format!(
                "no answer from Redis to a blocking wait within {:?}",
                wait + Duration::from_secs(2)
            ))),
        }
    }

    async fn run_hash(
        &self,
        run_id: &str,
    ) -> Result<(String, HashMap<String, Vec<u8>>), DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let key = Keys::run(&pfx, run_id);
        let value: Value = retry_dropped(|| {
            let mut conn = self.conn();
            let key = &key;
            async move { conn.hgetall(key).await }
        })
        .await?;
        let map = hash(value);
        if map.is_empty() {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        }
        Ok((pfx, map))
    }

    fn run_info_from(
        &self,
        run_id: &str,
        map: &HashMap<String, Vec<u8>>,
        outputs: Vec<Vec<u8>>,
    ) -> RunInfo {
        let status = match field_text(map, "st").as_deref() {
            Some("pending") => RunStatus::Pending,
            Some("running") => RunStatus::Running,
            Some("paused") => RunStatus::Paused,
            Some("completed") => RunStatus::Completed,
            Some("failed") => RunStatus::Failed,
            _ => RunStatus::Cancelled,
        };
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        RunInfo {
            run_id: run_id.to_owned(),
            workflow: field_text(map, "wf").unwrap_or_default(),
            status,
            started_at: time_ms(field_u64(map, "t0")),
            finished_at: map
                .contains_key("t1")
                .then(|| time_ms(field_u64(map, "t1"))),
            output: map.get("out").and_then(|b| json(b)),
            outputs: outputs.iter().filter_map(|b| json(b)).collect(),
            error: field_text(map, "err"),
            idempotency_key: field_text(map, "idem"),
            deadline: map
                .contains_key("dl")
                .then(|| time_ms(field_u64(map, "dl"))),
        }
    }

    async fn items_of(
        &self,
        run_id: &str,
    ) -> Result<Vec<(ItemId, HashMap<&'static str, Vec<u8>>)>, DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let value: Value = self
            .conn()
            .hgetall(Keys::items(&pfx, run_id))
            .await
            .map_err(backend)?;
        let map = hash(value);
        if map.is_empty() {
            self.run_hash(run_id).await?;
        }
        let mut items: BTreeMap<ItemId, HashMap<&'static str, Vec<u8>>> = BTreeMap::new();
        for (field, value) in map {
            let (id, part) = match field.split_once(':') {
                Some((id, suffix)) => (
                    id.to_owned(),
                    match suffix {
                        "n" => "node",
                        "s" => "status",
                        "a" => "attempt",
                        "d" => "deliveries",
                        "l" => "lease",
                        "w" => "worker",
                        _ => continue,
                    },
                ),
                None => (field, "payload"),
            };
            let Ok(id) = id.parse::<ItemId>() else {
                continue;
            };
            items.entry(id).or_default().insert(part, value);
        }
        Ok(items.into_iter().collect())
    }

    async fn script_reply(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
    ) -> Result<Reply, DistributedError> {
        let invocation = &*invocation;
        let value: Value = retry_dropped(|| {
            let mut conn = self.conn();
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
        Reply::from(value)
    }
}

/// Runs a command, once more after a short pause when the connection had dropped (Redis
/// restarted, network blip): the connection manager reconnects in the background. Every
/// command here may run twice safely: reads are idempotent, and every write is fenced or
/// deduplicated by its script (a commit whose reply was lost finds its lease gone).
async fn retry_dropped<T, F, Fut>(mut command: F) -> Result<T, DistributedError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut pause = Duration::from_millis(50);
    for _ in 0..4 {
        match command().await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() => {
                tracing::debug!(error = %e, ?pause, "Redis connection dropped; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other.map_err(backend),
        }
    }
    command().await.map_err(backend)
}

/// A take reply (see `lua/take.lua`): `Ok(taken)` or `Err(ms until something is due)`.
fn parse_take(r: Reply, worker: &WorkerId) -> Result<Result<Taken, Option<u64>>, DistributedError> {
    if r.int(0) != Some(1) {
        let due = r.int(1).filter(|d| *d >= 0).map(|d| d as u64);
        return Ok(Err(due));
    }
    let item_id: ItemId = r.text(2).parse().map_err(|_| malformed("item id"))?;
    let deadline = r.text(8).parse::<u64>().ok().map(time_ms);
    Ok(Ok(Taken {
        lease: Lease {
            run_id: r.text(1),
            item_id,
            token: r.int(3).unwrap_or_default() as u64,
            worker: worker.clone(),
        },
        bytes: r.bytes(4),
        node: r.text(5),
        attempt: r.int(6).unwrap_or(1) as u32,
        deliveries: r.int(7).unwrap_or(1) as u32,
        deadline,
        context: Some(VersionedContext {
            bytes: r.bytes(9),
            version: r.int(10).unwrap_or_default() as u64,
        }),
    }))
}

fn status_of(code: &[u8]) -> WorkItemStatus {
    match code {
        b"P" => WorkItemStatus::Pending,
        b"I" => WorkItemStatus::InProgress,
        b"R" => WorkItemStatus::WaitingRetry,
        b"H" => WorkItemStatus::Held,
        b"C" => WorkItemStatus::Completed,
        b"F" => WorkItemStatus::PermanentlyFailed,
        _ => WorkItemStatus::Cancelled,
    }
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

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn start_run(&self, start: StartRun) -> Result<RunId, DistributedError> {
        let pfx = self.keys().partition_of_run(&start.run_id);
        let r = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .start_run
                    .key(Keys::runs(&pfx))
                    .arg(&pfx)
                    .arg(self.retention_secs())
                    .arg(&start.run_id)
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
                    ),
            )
            .await?;
        match r.text(0).as_str() {
            "ok" => Ok(start.run_id),
            "exists" => Err(DistributedError::RunExists(start.run_id)),
            "dup" => Err(DistributedError::DuplicateRun {
                key: start.idempotency_key.unwrap_or_default(),
                existing: r.text(1),
            }),
            other => Err(malformed(&format!("start answered `{other}`"))),
        }
    }

    async fn run_info(&self, run_id: &str) -> Result<RunInfo, DistributedError> {
        // The record and its outputs in one round trip.
        let pfx = self.keys().partition_of_run(run_id);
        let mut pipe = redis::pipe();
        pipe.hgetall(Keys::run(&pfx, run_id))
            .lrange(Keys::outputs(&pfx, run_id), 0, -1);
        let pipe = &pipe;
        let (record, outputs): (Value, Vec<Vec<u8>>) = retry_dropped(|| {
            let mut conn = self.conn();
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        let map = hash(record);
        if map.is_empty() {
            return Err(DistributedError::UnknownRun(run_id.to_owned()));
        }
        Ok(self.run_info_from(run_id, &map, outputs))
    }

    async fn list_runs(&self, status: Option<RunStatus>) -> Result<Vec<RunInfo>, DistributedError> {
        let mut all: Vec<(u64, RunInfo)> = Vec::new();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let ids: Vec<(String, f64)> = self
                .conn()
                .zrevrange_withscores(Keys::runs(&pfx), 0, -1)
                .await
                .map_err(backend)?;
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
        let (name, verb) = match action {
            RunAction::Cancel => ("cancel", "cancel"),
            RunAction::Pause => ("pause", "pause"),
            RunAction::Resume => ("resume", "resume"),
        };
        let r = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .control
                    .key(Keys::runs(&pfx))
                    .arg(&pfx)
                    .arg(self.retention_secs())
                    .arg(run_id)
                    .arg(name),
            )
            .await?;
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
        loop {
            let mut next_due: Option<u64> = None;
            for k in 0..partitions {
                let pfx = self.keys().partition((home + k) % partitions);
                match self.take_in(&pfx, workflow, worker, options).await? {
                    Ok(taken) => return Ok(Some(taken)),
                    Err(due) => {
                        next_due = match (next_due, due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    }
                }
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            let mut block = left;
            if let Some(due) = next_due {
                block = block.min(Duration::from_millis(due.max(1)));
            }
            if partitions > 1 {
                block = block.min(Duration::from_millis(200));
            }
            self.block(&self.keys().partition(home), workflow, block)
                .await?;
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let r = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .heartbeat
                    .key(Keys::leases(&pfx))
                    .arg(&pfx)
                    .arg(self.retention_secs())
                    .arg(&lease.run_id)
                    .arg(lease.item_id.to_string())
                    .arg(lease.token)
                    .arg(lease_timeout.as_millis() as u64),
            )
            .await?;
        Ok(match r.text(0).as_str() {
            "ok" => LeaseState::Active(run_status_of(&r.text(1))),
            _ => LeaseState::Lost,
        })
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        let pfx = self.keys().partition_of_run(run_id);
        let mut pipe = redis::pipe();
        pipe.get(Keys::ctx(&pfx, run_id))
            .hget(Keys::run(&pfx, run_id), "ver");
        let pipe = &pipe;
        let (bytes, version): (Option<Vec<u8>>, Option<u64>) = retry_dropped(|| {
            let mut conn = self.conn();
            async move { pipe.query_async(&mut conn).await }
        })
        .await?;
        match (bytes, version) {
            (Some(bytes), version) => Ok(VersionedContext {
                bytes,
                version: version.unwrap_or_default(),
            }),
            _ => Err(DistributedError::UnknownRun(run_id.to_owned())),
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
        let r = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .fail
                    .key(Keys::delayed(&pfx))
                    .arg(&pfx)
                    .arg(self.retention_secs())
                    .arg(&lease.run_id)
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
                    ),
            )
            .await?;
        commit_outcome(&r)
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        self.script_reply(
            self.client
                .inner
                .scripts
                .release
                .key(Keys::leases(&pfx))
                .arg(&pfx)
                .arg(self.retention_secs())
                .arg(&lease.run_id)
                .arg(lease.item_id.to_string())
                .arg(lease.token),
        )
        .await?;
        Ok(())
    }

    async fn errors(&self, run_id: &str) -> Result<Vec<WorkflowError>, DistributedError> {
        let (pfx, _) = self.run_hash(run_id).await?;
        let raw: Vec<Vec<u8>> = self
            .conn()
            .lrange(Keys::errors(&pfx, run_id), 0, -1)
            .await
            .map_err(backend)?;
        Ok(raw
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect())
    }

    async fn metrics(&self, run_id: &str) -> Result<RunMetrics, DistributedError> {
        let (_, map) = self.run_hash(run_id).await?;
        // `n:<node>` holds "<count> <total µs> <max µs>".
        let mut per_node: BTreeMap<String, NodeTiming> = BTreeMap::new();
        for (field, value) in map.iter() {
            let Some(node) = field.strip_prefix("n:") else {
                continue;
            };
            let text = String::from_utf8_lossy(value);
            let mut numbers = text.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
            let (count, total, max) = (
                numbers.next().unwrap_or(0),
                numbers.next().unwrap_or(0),
                numbers.next().unwrap_or(0),
            );
            per_node.insert(
                node.to_owned(),
                NodeTiming {
                    count,
                    total: Duration::from_micros(total),
                    max: Duration::from_micros(max),
                },
            );
        }
        Ok(RunMetrics {
            total_work_items: field_u64(&map, "m_items"),
            completed: field_u64(&map, "m_done"),
            failed: field_u64(&map, "m_failed"),
            retries: field_u64(&map, "m_retries"),
            reclaimed: field_u64(&map, "m_reclaimed"),
            per_node,
        })
    }

    async fn work_items(&self, run_id: &str) -> Result<Vec<WorkItemInfo>, DistributedError> {
        let items = self.items_of(run_id).await?;
        Ok(items
            .into_iter()
            .map(|(id, parts)| {
                let text = |k: &str| {
                    parts
                        .get(k)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                WorkItemInfo {
                    item_id: id,
                    node: text("node").unwrap_or_default(),
                    status: status_of(parts.get("status").map_or(&b"X"[..], Vec::as_slice)),
                    attempt: text("attempt").and_then(|t| t.parse().ok()).unwrap_or(1),
                    deliveries: text("deliveries").and_then(|t| t.parse().ok()).unwrap_or(0),
                    worker: text("worker").map(WorkerId),
                    payload: parts
                        .get("payload")
                        .map(|b| payload_text(b))
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn pending_items(&self, run_id: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        let items = self.items_of(run_id).await?;
        Ok(items
            .into_iter()
            .filter(|(_, parts)| {
                matches!(
                    parts.get("status").map(Vec::as_slice),
                    Some(b"P" | b"I" | b"R" | b"H")
                )
            })
            .filter_map(|(_, mut parts)| parts.remove("payload"))
            .collect())
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DistributedError> {
        let mut out = Vec::new();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let value: Value = self
                .conn()
                .hgetall(Keys::dead_letters(&pfx))
                .await
                .map_err(backend)?;
            for (_, raw) in hash(value) {
                let Ok(letter) = serde_json::from_slice::<StoredLetter>(&raw) else {
                    continue;
                };
                let Ok(item_id) = letter.item_id.parse::<ItemId>() else {
                    continue;
                };
                let payload: Option<Vec<u8>> = self
                    .conn()
                    .hget(Keys::items(&pfx, &letter.run_id), &letter.item_id)
                    .await
                    .map_err(backend)?;
                out.push(DeadLetter {
                    run_id: letter.run_id,
                    item_id,
                    node: letter.node,
                    error: letter.error,
                    deliveries: letter.deliveries,
                    attempt: letter.attempt,
                    at: time_ms(letter.at),
                    payload: payload.map_or_else(|| "<expired>".to_owned(), |b| payload_text(&b)),
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
        // Cheap counters for a periodic sample: the ready list of `workflow` (it may still
        // hold a few stale entries that takes skip), and the partition-wide retry, lease and
        // dead-letter indexes (shared by every workflow of the deployment).
        let mut stats = QueueStats::default();
        for p in self.keys().all() {
            let pfx = self.keys().partition(p);
            let (ready, delayed, in_flight, dead, reclaimed): (u64, u64, u64, u64, Option<u64>) =
                redis::pipe()
                    .llen(Keys::ready(&pfx, workflow))
                    .zcard(Keys::delayed(&pfx))
                    .zcard(Keys::leases(&pfx))
                    .hlen(Keys::dead_letters(&pfx))
                    .get(Keys::reclaimed(&pfx))
                    .query_async(&mut self.conn())
                    .await
                    .map_err(backend)?;
            stats.ready += ready;
            stats.delayed += delayed;
            stats.in_flight += in_flight;
            stats.dead_letters += dead;
            stats.leases_reclaimed += reclaimed.unwrap_or(0);
        }
        Ok(Some(stats))
    }

    async fn report_worker(&self, health: &WorkerHealth) -> Result<(), DistributedError> {
        let json =
            serde_json::to_string(health).map_err(|e| DistributedError::Codec(e.to_string()))?;
        self.conn()
            .hset::<_, _, _, ()>(self.keys().workers(), health.worker_id.as_str(), json)
            .await
            .map_err(backend)
    }

    async fn workers(&self) -> Result<Vec<WorkerHealth>, DistributedError> {
        let value: Value = self
            .conn()
            .hgetall(self.keys().workers())
            .await
            .map_err(backend)?;
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
            self.conn()
                .hdel::<_, _, ()>(self.keys().workers(), ids)
                .await
                .map_err(backend)?;
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
        let script = &self.client.inner.scripts.commit;
        let mut inv = script.key(Keys::leases(&pfx));
        inv.arg(&pfx)
            .arg(self.retention_secs())
            .arg(&lease.run_id)
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
        // The next take runs in the same script only within the run's partition (one hash
        // tag per script); with several partitions the worker takes on its own afterwards.
        let fused = next.filter(|_| self.client.inner.config.partitions == 1);
        if let Some(n) = fused {
            inv.arg(n.workflow)
                .arg(n.worker.as_str())
                .arg(n.options.lease_timeout.as_millis() as u64)
                .arg(n.options.max_deliveries);
        }
        let mut r = self.script_reply(&mut inv).await?;
        let outcome = commit_outcome(&r)?;
        let taken = match (fused, r.0.get_mut(2).map(std::mem::take)) {
            (Some(n), Some(value)) => parse_take(Reply::from(value)?, n.worker)?.ok(),
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
        let r = self
            .script_reply(
                self.client
                    .inner
                    .scripts
                    .dead_letter
                    .key(Keys::dead_letters(&pfx))
                    .arg(&pfx)
                    .arg(self.retention_secs())
                    .arg(run_id)
                    .arg(item_id.to_string())
                    .arg(action),
            )
            .await?;
        match r.text(0).as_str() {
            "ok" => Ok(()),
            _ => Err(DistributedError::UnknownDeadLetter {
                run_id: run_id.to_owned(),
                item_id,
            }),
        }
    }
}
