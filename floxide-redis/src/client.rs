//! [`RedisClient`]: the connections of the backend.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{AsyncConnectionConfig, PushKind};

use floxide_core::distributed::{DistributedError, HeardOutputs};

use crate::keys::Keys;
use crate::reply::backend;
use crate::scripts::Scripts;
use crate::{RedisConfig, RedisConnection};

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
    servers: Servers,
    /// The shared command connection; replaced after repeated timeouts.
    conn: Mutex<RedisConnection>,
    /// Consecutive commands that timed out.
    timeouts: std::sync::atomic::AtomicU32,
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
    /// Whether the scripts run as functions of a loaded library (Redis 7 and later).
    pub(crate) functions: bool,
    /// The latest run events published by the scripts (for waiters on one run).
    pub(crate) recent: Arc<Mutex<RecentEvents>>,
    /// The outputs of completed runs, as their run events carried them.
    pub(crate) heard: Arc<HeardOutputs>,
    /// Bumped on every run event, for subscribers that must not miss one.
    pub(crate) version: Arc<tokio::sync::watch::Sender<u64>>,
    /// Signalled per run event, for waiters on one run.
    pub(crate) signals: Arc<floxide_core::distributed::RunSignals>,
    /// On a cluster, which partitions were told of new ready work (idle workers wait on it).
    pub(crate) wakes: Arc<Wakes>,
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

/// [`RedisBackendError::InvalidUrl`] for `config`'s URL (without its password).
fn invalid_url(config: &RedisConfig) -> impl Fn(String) -> RedisBackendError + '_ {
    |reason| RedisBackendError::InvalidUrl {
        url: redact(&config.url),
        reason,
    }
}

/// [`RedisBackendError::Connect`] for `config`'s URL (without its password).
fn unreachable(config: &RedisConfig) -> impl Fn(String) -> RedisBackendError + '_ {
    |reason| RedisBackendError::Connect {
        url: redact(&config.url),
        reason,
    }
}

/// What the client talks to.
enum Servers {
    /// One server.
    Server {
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
    },
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

/// Connects to the one server of `config`: the shared connection, and whether the scripts run
/// as a function library.
async fn connect_server(
    config: &RedisConfig,
    scripts: &Scripts,
) -> Result<(Servers, RedisConnection, bool), RedisBackendError> {
    let (invalid, connect) = (invalid_url(config), unreachable(config));
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
    let client = open_client(info, config).map_err(invalid)?;
    let no_answer = || connect(format!("no answer within {:?}", config.connect_timeout));
    // One direct attempt first, which also loads the scripts: a refused connection or
    // refused credentials are reported as such at once (the manager below retries every
    // failure with backoff, which would turn them into "no answer" after the timeout).
    let probe_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.connect_timeout));
    let functions = tokio::time::timeout(config.connect_timeout, async {
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(|e| connect(e.to_string()))?;
        // Functions where the server has them and the user may load them; else scripts.
        match crate::scripts::reload(scripts, &mut probe).await {
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
    let conn = tokio::time::timeout(
        config.connect_timeout,
        ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
    )
    .await
    .map_err(|_| no_answer())?
    .map_err(|e| connect(e.to_string()))?;
    let servers = Servers::Server {
        client,
        manager_config,
    };
    Ok((servers, RedisConnection::server(conn), functions))
}

/// A builder for clients of the cluster of `config`. Commands are not resent by the cluster
/// client (it could not mark them as retries): [`RedisClient::run`] resends them, redirects
/// included, with their request ids marked.
fn cluster_builder(config: &RedisConfig) -> Result<ClusterClientBuilder, String> {
    let mut builder = ClusterClientBuilder::new(config.nodes.iter().map(String::as_str))
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .retries(0);
    if let Some(user) = &config.username {
        builder = builder.username(user);
    }
    if let Some(password) = &config.password {
        builder = builder.password(password);
    }
    #[cfg(feature = "tls")]
    if config.nodes.iter().any(|n| n.starts_with("rediss://")) || config.tls_root.is_some() {
        // Several crates may try to install a provider; the first one wins, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(root) = &config.tls_root {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            });
        }
    }
    #[cfg(not(feature = "tls"))]
    if config.nodes.iter().any(|n| n.starts_with("rediss://")) {
        return Err(
            "this build of floxide-redis has no TLS support: enable its `tls` feature".to_owned(),
        );
    }
    Ok(builder)
}

/// Connects to the cluster of `config` and loads the function library on every master (a
/// cluster needs Redis 7 or later: sharded pub/sub and functions).
async fn connect_cluster(
    config: &RedisConfig,
    scripts: &Scripts,
) -> Result<(Servers, RedisConnection, bool), RedisBackendError> {
    let (invalid, connect) = (invalid_url(config), unreachable(config));
    let client = cluster_builder(config)
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .map_err(invalid)?;
    let conn = tokio::time::timeout(config.connect_timeout, async {
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| connect(e.to_string()))?;
        crate::scripts::reload(scripts, &mut conn)
            .await
            .map_err(|e| {
                connect(format!(
                    "loading the function library on every master failed (a cluster needs \
                     Redis 7 or later, and a user allowed to run FUNCTION LOAD): {e}"
                ))
            })?;
        Ok::<_, RedisBackendError>(conn)
    })
    .await
    .map_err(|_| connect(format!("no answer within {:?}", config.connect_timeout)))??;
    Ok((
        Servers::Cluster(client),
        RedisConnection::cluster(conn),
        true,
    ))
}

/// The partition count a client of `config` uses: the configured one (or, when it adopts,
/// the deployment's recorded one). The first client of a deployment records it; a client
/// whose count differs from the recorded one is refused (runs are placed by it).
async fn agreed_partitions(
    config: &RedisConfig,
    conn: &mut RedisConnection,
) -> Result<u32, RedisBackendError> {
    let connect = unreachable(config);
    let mut partitions = config.partitions();
    if config.adopt_partitions {
        let recorded: Option<u32> = redis::cmd("HGET")
            .arg(format!("{}meta", config.key_prefix))
            .arg("partitions")
            .query_async(conn)
            .await
            .map_err(|e| connect(e.to_string()))?;
        partitions = recorded.unwrap_or(partitions).max(1);
    }
    let keys = Keys::new(&config.key_prefix, partitions, config.is_cluster());
    let (_, recorded): (bool, u32) = redis::pipe()
        .hset_nx(keys.meta(), "partitions", partitions)
        .hget(keys.meta(), "partitions")
        .query_async(conn)
        .await
        .map_err(|e| connect(e.to_string()))?;
    if recorded != partitions {
        return Err(RedisBackendError::PartitionMismatch {
            prefix: config.key_prefix.clone(),
            configured: partitions,
            recorded,
        });
    }
    Ok(partitions)
}

/// Starts the task that listens to the partitions' run events (on a cluster also their
/// wake-ups) and waits until its subscription holds: events published before it would be
/// missed by waiters.
async fn subscribe(
    config: &RedisConfig,
    servers: &Servers,
    keys: &Keys,
    mut events: Events,
) -> Result<tokio::task::JoinHandle<()>, RedisBackendError> {
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let listener = match servers {
        Servers::Server { client, .. } => tokio::spawn(listen(client.clone(), events, subscribed)),
        Servers::Cluster(_) => {
            events.channels.extend(
                keys.all()
                    .map(|p| (Keys::wakes(&keys.partition(p)), Channel::Wakes(p))),
            );
            tokio::spawn(listen_cluster(config.clone(), events, subscribed))
        }
    };
    if tokio::time::timeout(config.connect_timeout, is_subscribed)
        .await
        .is_err()
    {
        listener.abort();
        return Err(unreachable(config)(format!(
            "subscribing to run events took longer than {:?}",
            config.connect_timeout
        )));
    }
    Ok(listener)
}

impl RedisClient {
    /// Connects to the server of `config`, loads the scripts and subscribes to run events.
    ///
    /// # Errors
    /// [`RedisBackendError::InvalidUrl`], or [`RedisBackendError::Connect`] when the server
    /// cannot be reached within the connect timeout or refuses the credentials.
    pub async fn new(config: RedisConfig) -> Result<Self, RedisBackendError> {
        let scripts = Scripts::new(
            config.is_cluster(),
            config.step_history,
            config.routine_history,
        );
        let (servers, mut conn, functions) = if config.is_cluster() {
            connect_cluster(&config, &scripts).await?
        } else {
            connect_server(&config, &scripts).await?
        };
        let partitions = agreed_partitions(&config, &mut conn).await?;
        let keys = Keys::new(&config.key_prefix, partitions, config.is_cluster());
        let recent = Arc::new(Mutex::new(RecentEvents::default()));
        let heard = Arc::new(HeardOutputs::default());
        let version = Arc::new(tokio::sync::watch::channel(0).0);
        let signals = Arc::new(floxide_core::distributed::RunSignals::default());
        let wakes = Arc::new(Wakes::new(partitions));
        let events = Events {
            channels: keys
                .all()
                .map(|p| (Keys::events(&keys.partition(p)), Channel::Runs))
                .collect(),
            recent: Arc::clone(&recent),
            heard: Arc::clone(&heard),
            version: Arc::clone(&version),
            signals: Arc::clone(&signals),
            wakes: Arc::clone(&wakes),
        };
        let listener = subscribe(&config, &servers, &keys, events).await?;
        let config = RedisConfig {
            partitions: Some(partitions),
            ..config
        };
        Ok(RedisClient {
            inner: Arc::new(ClientInner {
                servers,
                conn: Mutex::new(conn),
                timeouts: std::sync::atomic::AtomicU32::new(0),
                config,
                keys,
                scripts,
                functions,
                recent,
                heard,
                version,
                signals,
                wakes,
                blocking: Mutex::new(Vec::new()),
                listener,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis Cluster slot of each partition, in partition order: which master holds which
    /// partition is `CLUSTER SHARDS` (or `redis-cli --cluster check`) away.
    pub fn partition_slots(&self) -> Vec<u16> {
        let keys = &self.inner.keys;
        keys.all()
            .map(|p| crate::keys::slot_of_key(&keys.partition(p)))
            .collect()
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

    /// The shared command connection (it reconnects by itself; on a cluster it follows the
    /// slots). Commands sent on it directly are not retried; the backend's own are (within
    /// the configured retry window, redirections included).
    pub fn connection(&self) -> RedisConnection {
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
        F: FnMut(RedisConnection) -> Fut,
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
                    // A slot that moved is known at once (the connection refreshes its map).
                    if !matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::Moved)
                    ) {
                        tokio::time::sleep(pause).await;
                    }
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Replaces the shared connection (after repeated timeouts: a connection that died
    /// silently is never noticed by its manager).
    async fn rebuild(&self) {
        let fresh = tokio::time::timeout(self.inner.config.connect_timeout, async {
            match &self.inner.servers {
                Servers::Server {
                    client,
                    manager_config,
                } => ConnectionManager::new_with_config(client.clone(), manager_config.clone())
                    .await
                    .map(RedisConnection::server),
                Servers::Cluster(client) => client
                    .get_async_connection()
                    .await
                    .map(RedisConnection::cluster),
            }
        })
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

    /// Every key of this deployment (its key prefix): on one server by `SCAN`, on a cluster
    /// from each partition's slot (`CLUSTER GETKEYSINSLOT`) and the deployment-wide keys.
    /// For tools, tests and benchmarks: it reads every key name.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn deployment_keys(&self) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.connection();
        let mut out = Vec::new();
        if let Servers::Cluster(_) = self.inner.servers {
            let keys = &self.inner.keys;
            for p in keys.all() {
                let pfx = keys.partition(p);
                let slot = crate::keys::slot_of_key(&pfx);
                let mut count = redis::cmd("CLUSTER");
                count.arg("COUNTKEYSINSLOT").arg(slot);
                let n: u64 = conn.on_slot(&count, slot).await?;
                let mut list = redis::cmd("CLUSTER");
                list.arg("GETKEYSINSLOT").arg(slot).arg(n.max(1));
                let found: Vec<String> = conn.on_slot(&list, slot).await?;
                // Other deployments' partitions may share the slot.
                out.extend(found.into_iter().filter(|k| k.starts_with(&pfx)));
            }
            for key in [keys.meta(), keys.workers(), keys.graphs()] {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                if exists {
                    out.push(key);
                }
            }
            return Ok(out);
        }
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
            out.extend(keys);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Deletes every key of this deployment (its key prefix). For tests and benchmarks.
    ///
    /// # Errors
    /// A Redis error.
    pub async fn clear(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection();
        for keys in self.deployment_keys().await?.chunks(1000) {
            // On a cluster the keys go to their masters slot by slot.
            redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
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
        match &self.inner.servers {
            Servers::Server { client, .. } => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            // Idle workers on a cluster wait for sharded wake messages instead.
            Servers::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no blocking commands on a cluster",
            ))),
        }
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
                    // A cluster's slots moved or its failover is under way: the connection
                    // learns the new map, and a resent command reaches the right master.
                    | redis::ServerErrorKind::Moved
                    | redis::ServerErrorKind::Ask
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::ReadOnly
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

/// What a subscribed channel carries.
#[derive(Debug, Clone, Copy)]
enum Channel {
    /// Run events: the ids of the runs a script changed, one per line (`<id>\t<output>` for
    /// a run that completed with a short output).
    Runs,
    /// On a cluster: the name of a workflow that got ready work in partition `.0`.
    Wakes(u32),
}

/// Where the listener delivers what it hears.
struct Events {
    channels: std::collections::HashMap<String, Channel>,
    recent: Arc<Mutex<RecentEvents>>,
    heard: Arc<HeardOutputs>,
    version: Arc<tokio::sync::watch::Sender<u64>>,
    signals: Arc<floxide_core::distributed::RunSignals>,
    wakes: Arc<Wakes>,
}

impl Events {
    /// Wakes the waiters on `run` (`None`: on every run, and every idle worker: after a
    /// dropped subscription, messages may have been missed).
    fn wake(&self, run: Option<String>) {
        match &run {
            Some(run) => self.signals.changed(run),
            None => {
                self.wakes.signal_all();
                self.signals.changed_all();
            }
        }
        let n = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(run);
        self.version.send_replace(n);
    }

    /// Handles a message on `channel`.
    fn message(&self, channel: &str, payload: Option<String>) {
        match (self.channels.get(channel), payload) {
            (Some(Channel::Runs), Some(runs)) => {
                for line in runs.split('\n') {
                    let (id, output) = match line.split_once('\t') {
                        Some((id, output)) => (id, Some(output)),
                        None => (line, None),
                    };
                    let Some(run) = HeardOutputs::run_of_line(id) else {
                        continue;
                    };
                    if let Some(output) = output {
                        // Known before its waiters wake.
                        self.heard.insert(&run, output.as_bytes().to_vec());
                    }
                    self.wake(Some(run));
                }
            }
            (Some(Channel::Wakes(p)), _) => self.wakes.signal(*p),
            _ => self.wake(None),
        }
    }
}

/// On a cluster, which partitions were told of new ready work: idle workers wait on it
/// instead of blocking on each partition's wake list (one blocking pop cannot span slots).
#[derive(Debug)]
pub(crate) struct Wakes {
    /// Per partition, the number of the last signal it got.
    signals: Vec<std::sync::atomic::AtomicU64>,
    /// The number of the last signal of any partition.
    last: tokio::sync::watch::Sender<u64>,
    /// Per workflow and partition, what the last take there found.
    queues: Mutex<std::collections::HashMap<String, Vec<Found>>>,
}

/// What the last take in one partition found for one workflow.
#[derive(Debug, Clone, Copy, Default)]
struct Found {
    /// When.
    at: Option<tokio::time::Instant>,
    /// Nothing ready, as of the partition's signal with this number (`None`: not known to be
    /// empty).
    empty_as_of: Option<u64>,
    /// When something becomes due there (a retry, an expiring lease).
    due: Option<tokio::time::Instant>,
}

impl Wakes {
    fn new(partitions: u32) -> Self {
        Wakes {
            signals: (0..partitions)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            last: tokio::sync::watch::channel(0).0,
            queues: Mutex::default(),
        }
    }

    /// Runs `f` on what is known of `workflow`'s queues.
    fn with_found<T>(&self, workflow: &str, f: impl FnOnce(&mut Vec<Found>) -> T) -> T {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let found = queues
            .entry(workflow.to_owned())
            .or_insert_with(|| vec![Found::default(); self.signals.len()]);
        f(found)
    }

    /// Whether a take of `workflow` in partition `p` may find something: it was not found
    /// empty, was signalled since, has something due, or was last looked at `stale` ago or
    /// more. (A lease another process took after that look is not known here; looking again
    /// within a lease timeout learns its expiry before it expires.)
    pub(crate) fn worth_taking(
        &self,
        workflow: &str,
        p: u32,
        now: tokio::time::Instant,
        stale: Duration,
    ) -> bool {
        let signal = self.of(p);
        self.with_found(workflow, |found| {
            found.get(p as usize).is_none_or(|f| {
                f.empty_as_of.is_none_or(|seen| signal > seen)
                    || f.due.is_some_and(|d| d <= now)
                    || f.at.is_none_or(|at| now.duration_since(at) >= stale)
            })
        })
    }

    /// Records what a take of `workflow` in partition `p` found: ready work (`empty_as_of`
    /// `None`), or nothing as of signal `empty_as_of`, with something due at `due`.
    pub(crate) fn found(
        &self,
        workflow: &str,
        p: u32,
        empty_as_of: Option<u64>,
        due: Option<tokio::time::Instant>,
    ) {
        self.with_found(workflow, |found| {
            if let Some(f) = found.get_mut(p as usize) {
                *f = Found {
                    at: Some(tokio::time::Instant::now()),
                    empty_as_of,
                    due,
                };
            }
        });
    }

    /// The earliest time something becomes due in `workflow`'s partitions, or one of them
    /// becomes `stale`.
    pub(crate) fn next_due(&self, workflow: &str, stale: Duration) -> Option<tokio::time::Instant> {
        self.with_found(workflow, |found| {
            found
                .iter()
                .flat_map(|f| [f.due, f.at.map(|at| at + stale)])
                .flatten()
                .min()
        })
    }

    /// Partition `p` may have new ready work (this client's own writes signal it at once).
    pub(crate) fn signal(&self, p: u32) {
        self.last.send_modify(|n| {
            *n += 1;
            if let Some(s) = self.signals.get(p as usize) {
                s.store(*n, Ordering::SeqCst);
            }
        });
    }

    fn signal_all(&self) {
        self.last.send_modify(|n| {
            *n += 1;
            for s in &self.signals {
                s.store(*n, Ordering::SeqCst);
            }
        });
    }

    /// The number of the last signal of any partition.
    pub(crate) fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// The number of the last signal of partition `p`.
    pub(crate) fn of(&self, p: u32) -> u64 {
        self.signals
            .get(p as usize)
            .map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Waits until a signal after number `seen` arrives, or `timeout` passes.
    pub(crate) async fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut rx = self.last.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n > seen)).await;
    }
}

/// Follows the run events of every partition, waking waiters; resubscribes after a
/// connection loss, waking everyone when the subscription drops and again once it is back
/// (events published in between are missed).
async fn listen(client: redis::Client, events: Events, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let mut ok = true;
                for channel in events.channels.keys() {
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
                    events.wake(None);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        events.message(
                            message.get_channel_name(),
                            message.get_payload::<String>().ok(),
                        );
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "run event subscription failed; retrying"),
        }
        events.wake(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// [`listen`] on a cluster: sharded subscriptions (`SSUBSCRIBE`), so that each partition's
/// messages come from its own master only. When a master's connection drops (it died, and a
/// replica may be taking over) or the server ends a subscription (its slot moved to another
/// master), the subscriptions start over on a fresh connection, which learns the cluster's
/// current slots; every waiter is woken meanwhile and once they are back.
async fn listen_cluster(
    config: RedisConfig,
    events: Events,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let subscribed = async {
            let client = cluster_builder(&config)
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "TLS", e)))?
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            // One channel per call: the channels of one `SSUBSCRIBE` must share a slot.
            for channel in events.channels.keys() {
                conn.ssubscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        match subscribed.await {
            Ok(conn) => {
                backoff = Duration::from_millis(50);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                events.wake(None);
                while let Some(push) = rx.recv().await {
                    match push.kind {
                        PushKind::SMessage => {
                            let mut data = push.data.into_iter();
                            let channel: Option<String> =
                                data.next().and_then(|v| redis::from_redis_value(v).ok());
                            let payload: Option<String> =
                                data.next().and_then(|v| redis::from_redis_value(v).ok());
                            match channel {
                                Some(channel) => events.message(&channel, payload),
                                None => events.wake(None),
                            }
                        }
                        PushKind::Disconnection | PushKind::SUnsubscribe => break,
                        _ => {}
                    }
                }
                drop(conn);
            }
            Err(error) => tracing::debug!(%error, "run event subscription failed; retrying"),
        }
        events.wake(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
