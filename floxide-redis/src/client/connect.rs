//! Opening the client: the server's or the cluster's connections, the partition count the
//! deployment agreed on, and the subscription to run events.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::AsyncConnectionConfig;

use crate::keys::Keys;
use crate::scripts::Scripts;
use crate::{RedisConfig, RedisConnection};

use super::events::{listen, listen_cluster, Channel, Events};
use super::RedisBackendError;

/// The URL without its password.
pub(super) fn redact(url: &str) -> String {
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
pub(super) enum Servers {
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
pub(super) async fn connect_server(
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
/// client (it could not mark them as retries): [`RedisClient::run`](super::RedisClient::run) resends them, redirects
/// included, with their request ids marked.
pub(super) fn cluster_builder(config: &RedisConfig) -> Result<ClusterClientBuilder, String> {
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
pub(super) async fn connect_cluster(
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
pub(super) async fn agreed_partitions(
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
pub(super) async fn subscribe(
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
