//! [`RedisBackend`]: the `Backend` trait on Redis, one Lua script per transition.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use floxide_core::distributed::payload_text;
use floxide_core::distributed::{
    machine, AdminBackend, DeadLetter, DistributedError, NodeTiming, QueueStats, RunAction, RunId,
    RunInfo, RunMetrics, RunPage, RunQuery, RunStatus, RunWatch, StartRun, StepEvent, WorkItemInfo,
    WorkItemStatus, WorkerHealth, WorkerId, WorkflowError,
};
use floxide_core::{ItemId, RegisteredGraph, WorkflowGraph};
use redis::Value;

use crate::keys::Keys;
use crate::reply::{hash, malformed, ms_of, time_ms, Reply};
use crate::scripts::{run_call, Call, Lua};
use crate::{RedisBackendError, RedisClient, RedisConfig};

mod admin;
mod starts;

/// The distributed backend on Redis: any number of worker processes on any number of machines
/// share one Redis (see the crate documentation for the guarantees and the key layout).
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: RedisClient,
    /// Single starts waiting for their partition's next start call (see `backend/starts.rs`).
    starts: std::sync::Arc<starts::StartQueues>,
    /// Workers whose last commit's take leased nothing, when, and when work falls due (see
    /// `worker.rs`): their next wait blocks at once.
    pub(crate) idle: std::sync::Arc<crate::worker::IdleHints>,
}

/// A fresh request id: retries of one request send the same id, and the scripts answer a
/// retry of an applied request as they answered it the first time.
pub(crate) fn request_id() -> String {
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
        RedisBackend {
            client,
            starts: std::sync::Arc::default(),
            idle: std::sync::Arc::default(),
        }
    }

    /// The client.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.client.inner.keys
    }

    /// Tells this client's idle workers on a cluster that `run_id`'s partition may have new
    /// ready work (other processes learn it from the partition's wake channel).
    pub(crate) fn may_have_work(&self, run_id: &str) {
        if self.client.inner.config.is_cluster() {
            let p = self.keys().partition_of(run_id);
            self.client.inner.wakes.signal(p);
        }
    }

    /// The scripts' common arguments: partition prefix, retentions (ms), request id.
    pub(crate) fn invoke<'a>(
        &self,
        script: &'a Lua,
        key: String,
        pfx: &str,
        rid: &str,
    ) -> Call<'a> {
        let config = &self.client.inner.config;
        let mut call = Call::new(script, key);
        // Never written: while the partition's slot migrates, a cluster refuses a call that
        // declares a missing key on both nodes (`TRYAGAIN`, resent until the move is done)
        // rather than run it over a half-moved partition. Every key a script touches shares
        // the partition's hash tag, so it is in the slot the declared keys are checked for.
        call.key(Keys::guard(pfx));
        call.arg(pfx)
            .arg(config.retention.as_millis() as u64)
            .arg(config.letter_retention.as_millis() as u64)
            .request(rid);
        call
    }

    /// Runs a script (retried through the client's connection handling: the request id makes
    /// a retry of an applied write answer as the first attempt did).
    pub(crate) async fn script_reply(&self, call: &Call<'_>) -> Result<Reply, DistributedError> {
        self.script_reply_after(call, 0).await
    }

    /// [`script_reply`](Self::script_reply) for a request that was sent before and may have
    /// been applied (every attempt is marked as a retry).
    pub(crate) async fn script_reply_retried(
        &self,
        call: &Call<'_>,
    ) -> Result<Reply, DistributedError> {
        self.script_reply_after(call, 1).await
    }

    /// Runs `call`, `sent` attempts having been made already.
    async fn script_reply_after(
        &self,
        call: &Call<'_>,
        sent: u32,
    ) -> Result<Reply, DistributedError> {
        let inner = &self.client.inner;
        let mut attempts = sent;
        let value: Value =
            self.client
                .run(|mut conn| {
                    attempts += 1;
                    let retry = attempts > 1;
                    async move {
                        run_call(&inner.scripts, inner.functions, call, retry, &mut conn).await
                    }
                })
                .await?;
        Reply::from(value)
    }

    /// Reads fields of a run's record (`None` for an unknown run).
    pub(crate) async fn run_fields(
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
        let fields = self.whole_hash(&Keys::items(&pfx, run_id)).await?;
        let mut items: BTreeMap<ItemId, StoredItem> = BTreeMap::new();
        for (field, value) in fields {
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

    /// Every field of the hash at `key` (empty when there is none).
    pub(crate) async fn whole_hash(
        &self,
        key: &str,
    ) -> Result<HashMap<String, Vec<u8>>, DistributedError> {
        let value: Value =
            self.client
                .run(|mut conn| async move {
                    redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                })
                .await?;
        Ok(hash(value))
    }

    /// Every element of the list at `key` (empty when there is none).
    pub(crate) async fn whole_list(&self, key: &str) -> Result<Vec<Vec<u8>>, DistributedError> {
        self.client
            .run(|mut conn| async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
            .await
    }

    pub(crate) async fn status_of(&self, run_id: &str) -> Result<RunStatus, DistributedError> {
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

pub(crate) fn run_status_of(text: &str) -> RunStatus {
    match text {
        "pending" => RunStatus::Pending,
        "running" => RunStatus::Running,
        "paused" => RunStatus::Paused,
        "completed" => RunStatus::Completed,
        "failed" => RunStatus::Failed,
        _ => RunStatus::Cancelled,
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

/// The steps a run completed: the counts of its node timings (`nt`) add up to them. A record
/// written before they did also counts them in `m_done`.
pub(crate) fn steps_done(m_done: Option<u64>, nt: Option<&str>) -> u64 {
    let counted: u64 = node_timings(nt.unwrap_or_default())
        .values()
        .map(|t| t.count)
        .sum();
    counted.max(m_done.unwrap_or_default())
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
