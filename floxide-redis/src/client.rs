//! [`RedisClient`]: the connections of the backend.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use floxide_core::distributed::{DistributedError, HeardOutputs};

use crate::keys::Keys;
use crate::reply::backend;
use crate::scripts::Scripts;
use crate::{RedisConfig, RedisConnection};

mod connect;
mod events;

use connect::{agreed_partitions, connect_cluster, connect_server, redact, subscribe, Servers};
use events::{Channel, Events};
use events::{RecentEvents, Wakes};

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
