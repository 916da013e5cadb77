//! [`RedisClient`]: the connections of the backend.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use floxide_core::distributed::DistributedError;

use crate::keys::Keys;
use crate::reply::backend;
use crate::scripts::Scripts;
use crate::RedisConfig;

/// Why the Redis backend could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackendError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached, or refused the credentials.
    #[error("cannot connect to Redis at `{url}`: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The server's or the network's answer.
        reason: String,
    },
    /// The deployment (this key prefix on this Redis) was set up with another partition
    /// count: runs are placed by it, so every client must use the recorded one.
    #[error(
        "the deployment `{prefix}` uses {recorded} partition(s), but this client is configured \
         with {configured}: use `with_partitions({recorded})` (changing the count of a live \
         deployment would strand its runs)"
    )]
    PartitionMismatch {
        /// The key prefix.
        prefix: String,
        /// The count this client was configured with.
        configured: u32,
        /// The count recorded in Redis.
        recorded: u32,
    },
}

impl From<RedisBackendError> for floxide_core::FloxideError {
    fn from(error: RedisBackendError) -> Self {
        floxide_core::distributed::DistributedError::Backend(error.to_string()).into()
    }
}

/// The Floxide 3.x name of [`RedisBackendError`], the error of [`RedisClient::new`].
pub type RedisClientError = RedisBackendError;

/// A connection to Redis for the backend: a shared, reconnecting connection for commands,
/// dedicated connections for blocking waits, and a subscription to run events.
///
/// Clones share everything.
#[derive(Clone)]
pub struct RedisClient {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) client: redis::Client,
    /// The shared command connection; replaced after repeated timeouts.
    conn: Mutex<ConnectionManager>,
    manager_config: ConnectionManagerConfig,
    /// Consecutive commands that timed out.
    timeouts: std::sync::atomic::AtomicU32,
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    /// Whether the scripts run as functions of a loaded library (Redis 7 and later).
    pub(crate) functions: bool,
    /// The latest run events published by the scripts (for waiters on one run).
    pub(crate) recent: Arc<Mutex<RecentEvents>>,
    /// Bumped on every run event, for subscribers that must not miss one.
    pub(crate) version: Arc<tokio::sync::watch::Sender<u64>>,
    blocking: Mutex<Vec<MultiplexedConnection>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("url", &redact(&self.inner.config.url))
            .field("key_prefix", &self.inner.config.key_prefix)
            .finish_non_exhaustive()
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A `redis::Client` for `info`, with TLS set up for `rediss://` URLs.
fn open_client(info: redis::ConnectionInfo, config: &RedisConfig) -> Result<redis::Client, String> {
    let tls = config.url.starts_with("rediss://");
    #[cfg(feature = "tls")]
    if tls || config.tls_root.is_some() {
        // Several crates may try to install a provider; the first one wins, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(root) = &config.tls_root {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            };
            return redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string());
        }
    }
    #[cfg(not(feature = "tls"))]
    if tls {
        return Err(
            "this build of floxide-redis has no TLS support: enable its `tls` feature".to_owned(),
        );
    }
    redis::Client::open(info).map_err(|e| e.to_string())
}

impl RedisClient {
    /// Connects to the server of `config`, loads the scripts and subscribes to run events.
    ///
    /// # Errors
    /// [`RedisBackendError::InvalidUrl`], or [`RedisBackendError::Connect`] when the server
    /// cannot be reached within the connect timeout or refuses the credentials.
    pub async fn new(config: RedisConfig) -> Result<Self, RedisBackendError> {
        let invalid = |reason: String| RedisBackendError::InvalidUrl {
            url: redact(&config.url),
            reason,
        };
        let connect = |reason: String| RedisBackendError::Connect {
            url: redact(&config.url),
            reason,
        };
        // As in Floxide 3.x, `host:port` without a scheme means `redis://host:port`.
        let url = if config.url.contains("://") || config.url.starts_with("unix:") {
            config.url.clone()
        } else {
            format!("redis://{}", config.url)
        };
        let base = redis::Client::open(url.as_str()).map_err(|e| invalid(e.to_string()))?;
        let mut info = base.get_connection_info().clone();
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = open_client(info, &config).map_err(invalid)?;
        let no_answer = || connect(format!("no answer within {:?}", config.connect_timeout));
        // One direct attempt first, which also loads the scripts: a refused connection or
        // refused credentials are reported as such at once (the manager below retries every
        // failure with backoff, which would turn them into "no answer" after the timeout).
        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.connect_timeout));
        let scripts = Scripts::new();
        let functions = tokio::time::timeout(config.connect_timeout, async {
            let mut probe = client
                .get_multiplexed_async_connection_with_config(&probe_config)
                .await
                .map_err(|e| connect(e.to_string()))?;
            // Functions where the server has them and the user may load them; else scripts.
            match crate::scripts::reload(&scripts, &mut probe).await {
                Ok(()) => return Ok::<_, RedisBackendError>(true),
                // A server before 7.0 does not know FUNCTION; an ACL may not allow it.
                Err(e) if crate::scripts::no_functions(&e) => {
                    tracing::debug!(error = %e, "no function library; running scripts");
                }
                Err(e) => return Err(connect(format!("loading the scripts failed: {e}"))),
            }
            for script in scripts.all() {
                script
                    .load_async(&mut probe)
                    .await
                    .map_err(|e| connect(format!("loading the scripts failed: {e}")))?;
            }
            Ok(false)
        })
        .await
        .map_err(|_| no_answer())??;
        // The manager reconnects once per failure; `RedisClient::run` retries the command
        // within the retry window (a manager retrying on its own blocks a command for tens
        // of seconds while Redis is down).
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_min_delay(Duration::from_millis(25))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(1);
        let mut conn = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
        )
        .await
        .map_err(|_| no_answer())?
        .map_err(|e| connect(e.to_string()))?;
        let mut partitions = config.partitions;
        if config.adopt_partitions {
            let recorded: Option<u32> = redis::cmd("HGET")
                .arg(format!("{}meta", config.key_prefix))
                .arg("partitions")
                .query_async(&mut conn)
                .await
                .map_err(|e| connect(e.to_string()))?;
            partitions = recorded.unwrap_or(partitions).max(1);
        }
        let keys = Keys::new(&config.key_prefix, partitions);
        // The partition count is recorded by the first client of a deployment; every later
        // client must use the same (runs are placed by it).
        let (_, recorded): (bool, u32) = redis::pipe()
            .hset_nx(keys.meta(), "partitions", partitions)
            .hget(keys.meta(), "partitions")
            .query_async(&mut conn)
            .await
            .map_err(|e| connect(e.to_string()))?;
        if recorded != partitions {
            return Err(RedisBackendError::PartitionMismatch {
                prefix: config.key_prefix.clone(),
                configured: partitions,
                recorded,
            });
        }
        let recent = Arc::new(Mutex::new(RecentEvents::default()));
        let version = Arc::new(tokio::sync::watch::channel(0).0);
        let channels: Vec<String> = keys
            .all()
            .map(|p| Keys::events(&keys.partition(p)))
            .collect();
        let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen(
            client.clone(),
            channels,
            Arc::clone(&recent),
            Arc::clone(&version),
            subscribed,
        ));
        // Events published before the subscription would be missed by waiters.
        if tokio::time::timeout(config.connect_timeout, is_subscribed)
            .await
            .is_err()
        {
            listener.abort();
            return Err(connect(format!(
                "subscribing to run events took longer than {:?}",
                config.connect_timeout
            )));
        }
        let config = RedisConfig {
            partitions,
            ..config
        };
        Ok(RedisClient {
            inner: Arc::new(ClientInner {
                client,
                conn: Mutex::new(conn),
                manager_config,
                timeouts: std::sync::atomic::AtomicU32::new(0),
                config,
                keys,
                scripts,
                functions,
                recent,
                version,
                blocking: Mutex::new(Vec::new()),
                listener,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The key prefix of this deployment (Floxide 3.x).
    pub fn key_prefix(&self) -> &str {
        self.inner.config.key_prefix()
    }

    /// `key` under this deployment's prefix (Floxide 3.x), for keys of your own next to
    /// Floxide's.
    pub fn prefixed_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix())
    }

    /// The shared command connection (it reconnects by itself). Commands sent on it directly
    /// are not retried; the backend's own are (within the configured retry window).
    pub fn connection(&self) -> ConnectionManager {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `command` on the shared connection. After a dropped or refused connection, a
    /// timeout, or a server still loading its data, it is run again with backoff (25 ms
    /// doubling to 500 ms) until the configured retry window has passed; after three timeouts
    /// in a row the connection is rebuilt. Every command of the backend may run twice safely:
    /// reads are idempotent, and every write carries a request id by which a retry gets the
    /// first answer.
    ///
    /// # Errors
    /// The command's error once it is not retryable or the window has passed.
    pub(crate) async fn run<T, F, Fut>(&self, mut command: F) -> Result<T, DistributedError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            match command(self.connection()).await {
                Ok(value) => {
                    self.inner.timeouts.store(0, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e)
                    if retryable(&e)
                        && started.elapsed() + pause < self.inner.config.retry_window =>
                {
                    if e.is_timeout()
                        && self.inner.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= 3
                    {
                        self.rebuild().await;
                    }
                    tracing::debug!(error = %e, ?pause, "Redis command failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Replaces the shared connection (after repeated timeouts: a connection that died
    /// silently is never noticed by its manager).
    async fn rebuild(&self) {
        let fresh = tokio::time::timeout(
            self.inner.config.connect_timeout,
            ConnectionManager::new_with_config(
                self.inner.client.clone(),
                self.inner.manager_config.clone(),
            ),
        )
        .await;
        match fresh {
            Ok(Ok(conn)) => {
                *self
                    .inner
                    .conn
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = conn;
                self.inner.timeouts.store(0, Ordering::Relaxed);
                tracing::info!("rebuilt the Redis connection after repeated timeouts");
            }
            Ok(Err(error)) => tracing::debug!(%error, "could not rebuild the Redis connection"),
            Err(_) => tracing::debug!("rebuilding the Redis connection timed out"),
        }
    }

    /// Deletes every key of this deployment (its key prefix). For tests and benchmarks.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn clear(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection();
        let pattern = self.inner.keys.pattern();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// A connection for one blocking command (returned with [`give_back`](Self::give_back)).
    pub(crate) async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self
            .inner
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.config.connect_timeout))
            .set_response_timeout(None);
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub(crate) fn give_back(&self, conn: MultiplexedConnection) {
        let mut pool = self
            .inner
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 64 {
            pool.push(conn);
        }
    }
}

/// Whether a failed command may succeed when sent again.
fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::MasterDown
            )
        )
}

/// The last run events, numbered: lets a waiter on one run ignore the others' events.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    /// Events as (number, run id); `None` stands for "any run" (after a reconnection,
    /// events may have been missed).
    events: std::collections::VecDeque<(u64, Option<String>)>,
    last: u64,
}

impl RecentEvents {
    const KEEP: usize = 4096;

    fn record(&mut self, run: Option<String>) -> u64 {
        self.last += 1;
        if self.events.len() == Self::KEEP {
            self.events.pop_front();
        }
        self.events.push_back((self.last, run));
        self.last
    }

    /// Whether an event after number `since` may concern `run`.
    pub(crate) fn touched_since(&self, since: u64, run: &str) -> bool {
        if self
            .events
            .front()
            .is_some_and(|(first, _)| *first > since + 1)
        {
            return true; // some events were dropped: assume the worst
        }
        self.events
            .iter()
            .rev()
            .take_while(|(n, _)| *n > since)
            .any(|(_, r)| r.as_deref().is_none_or(|r| r == run))
    }
}

/// Follows the run events of every partition, waking waiters; resubscribes after a
/// connection loss, waking everyone when the subscription drops and again once it is back
/// (events published in between are missed).
async fn listen(
    client: redis::Client,
    channels: Vec<String>,
    recent: Arc<Mutex<RecentEvents>>,
    version: Arc<tokio::sync::watch::Sender<u64>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let wake = |run: Option<String>| {
        let n = recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(run);
        version.send_replace(n);
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let mut ok = true;
                for channel in &channels {
                    if pubsub.subscribe(channel).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    backoff = Duration::from_millis(50);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    // Events published while the subscription was down are lost: wake every
                    // waiter now that it is back, so that each one reads its run again.
                    wake(None);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        // One message names every run a script changed, one per line.
                        match message.get_payload::<String>() {
                            Ok(runs) => runs.split('\n').for_each(|run| wake(Some(run.to_owned()))),
                            Err(_) => wake(None),
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "run event subscription failed; retrying"),
        }
        wake(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
