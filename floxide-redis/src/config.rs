//! [`RedisConfig`]: where the Redis server is and how keys are named.

use std::time::Duration;

/// The default partition count on a Redis Cluster: 48 partitions give 3, 4, 6, 8, 12 and 16
/// masters exactly equal shares, and any count of masters up to 16 shares that differ by at
/// most one partition.
pub const CLUSTER_PARTITIONS: u32 = 48;

/// The seed node URLs of a `redis+cluster://` (`rediss+cluster://`) URL; empty for any other.
fn cluster_seeds(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let scheme = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return Vec::new(),
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, tail) = match hosts.find(['/', '?', '#']) {
        Some(at) => hosts.split_at(at),
        None => (hosts, ""),
    };
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}://{credentials}{host}{tail}"))
        .collect()
}

/// Connection and layout settings of the Redis backend.
///
/// ```
/// use floxide_redis::RedisConfig;
/// let config = RedisConfig::new("redis://127.0.0.1:6379/")
///     .with_key_prefix("orders:")
///     .with_password("secret")
///     .with_connect_timeout(std::time::Duration::from_secs(2));
/// assert_eq!(config.key_prefix(), "orders:");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub(crate) url: String,
    /// The seed nodes of a Redis Cluster (empty: one server at `url`).
    pub(crate) nodes: Vec<String>,
    pub(crate) key_prefix: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// The partition count asked for (`None`: the default for the deployment's kind).
    pub(crate) partitions: Option<u32>,
    pub(crate) adopt_partitions: bool,
    pub(crate) retention: Duration,
    pub(crate) letter_retention: Duration,
    pub(crate) retry_window: Duration,
    pub(crate) tls_root: Option<Vec<u8>>,
    pub(crate) step_history: bool,
    pub(crate) routine_history: bool,
}

impl RedisConfig {
    /// Settings for the server at `url` (`redis://[user:password@]host:port/db`, or `rediss://`
    /// for TLS when the crate is built with its `tls` feature).
    ///
    /// A Redis Cluster is named by its seed nodes, comma-separated, under the scheme
    /// `redis+cluster://` (or `rediss+cluster://` for TLS):
    /// `redis+cluster://user:password@10.0.0.1:7000,10.0.0.2:7000/`. The same as
    /// [`cluster`](Self::cluster).
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        let nodes = cluster_seeds(&url);
        RedisConfig {
            url,
            nodes,
            key_prefix: "floxide:".to_owned(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            partitions: None,
            adopt_partitions: false,
            retention: Duration::from_secs(24 * 3600),
            letter_retention: Duration::from_secs(7 * 24 * 3600),
            retry_window: Duration::from_secs(5),
            tls_root: None,
            step_history: true,
            routine_history: false,
        }
    }

    /// Settings for a Redis Cluster reached through `nodes`, each a server URL
    /// (`redis://host:port`, `rediss://` for TLS; credentials in the first one, or set with
    /// [`with_username`](Self::with_username) and [`with_password`](Self::with_password)).
    /// One reachable node is enough: the client learns the others from it.
    ///
    /// On a cluster the default partition count is [`CLUSTER_PARTITIONS`], and the
    /// partitions' hash tags are chosen to fall evenly over the 16,384 slots, so that masters
    /// holding equal slot ranges get an equal share of the runs.
    ///
    /// ```
    /// use floxide_redis::RedisConfig;
    /// let config = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
    /// assert!(config.is_cluster());
    /// assert_eq!(config.partitions(), floxide_redis::CLUSTER_PARTITIONS);
    /// ```
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut config = RedisConfig::new(nodes.first().cloned().unwrap_or_default());
        config.nodes = nodes;
        config
    }

    /// Whether these settings name a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The seed nodes of a cluster (empty for one server).
    pub fn cluster_nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Every key starts with `prefix` (default `floxide:`): several deployments can share one
    /// Redis.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The ACL user (overrides the one in the URL).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (overrides the one in the URL).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The Floxide 3.x name of [`with_connect_timeout`](Self::with_connect_timeout).
    pub fn with_connection_timeout(self, timeout: Duration) -> Self {
        self.with_connect_timeout(timeout)
    }

    /// How long a command may take to answer (default 10 s; blocking waits are not bounded
    /// by it).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Spreads runs over `n` partitions (default 1 on one server, [`CLUSTER_PARTITIONS`] on a
    /// cluster). Each partition's keys share one hash tag (one cluster slot), so on a Redis
    /// Cluster the partitions live on different masters: choose a multiple of the master
    /// count, a few per master, so that each gets an equal share.
    pub fn with_partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n.max(1));
        self
    }

    /// Whether the scripts record each run's step history (on by default): every lease taken,
    /// renewed or expired, every commit applied or fenced out, every failure and release, read
    /// back by `AdminBackend::step_history` and drawn by the dashboard. It costs a list push
    /// per call and run (a commit and the hand-off of its successor share one): one command
    /// per step of a 3-step linear run. A deployment that never looks at it can turn it off
    /// (its runs then have an empty history). Processes of one deployment may differ in this
    /// setting.
    ///
    /// What is kept once a run finished: see
    /// [`with_routine_step_history`](Self::with_routine_step_history).
    pub fn with_step_history(mut self, on: bool) -> Self {
        self.step_history = on;
        self
    }

    /// Whether a run that completes with a routine step history keeps it for the retention
    /// (off by default). A history is routine while every item was leased once, on its first
    /// attempt, and renewed or committed: nothing expired, failed, was fenced out or released.
    /// By default such a history is dropped when its run completes, as Redis holds everything
    /// in memory and it would be most of a finished run's bytes (about 800 of a 3-step run's
    /// 1,400); its node timings stay in the run's record. Failed and cancelled runs, and runs
    /// whose history holds anything else, keep theirs for the retention.
    pub fn with_routine_step_history(mut self, keep: bool) -> Self {
        self.routine_history = keep;
        self
    }

    /// Uses the partition count the deployment recorded (its first client's), whatever
    /// [`with_partitions`](Self::with_partitions) says; that one is used for a new deployment.
    /// For tools that inspect a deployment, like the `floxide` CLI.
    pub fn with_recorded_partitions(mut self) -> Self {
        self.adopt_partitions = true;
        self
    }

    /// How long finished runs are kept before their keys expire (default 24 h).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_secs(1));
        self
    }

    /// How long dead letters are kept before they expire (default 7 days), whether or not
    /// their run is still kept.
    pub fn with_dead_letter_retention(mut self, retention: Duration) -> Self {
        self.letter_retention = retention.max(Duration::from_secs(1));
        self
    }

    /// How long a command is retried after a dropped connection, a refused connection or a
    /// timeout before the error reaches the caller (default 5 s: a Redis restart or failover
    /// of a few seconds goes unnoticed). Writes are retried safely: each carries a request id,
    /// and a retry of a request that was applied gets the first answer.
    pub fn with_retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// For `rediss://` URLs: trust the certificate authority in `pem` (PEM text) instead of
    /// the operating system's store, e.g. for a private CA. (`rediss://...#insecure` skips
    /// verification altogether; use it only for tests.)
    pub fn with_tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        match self.partitions {
            Some(n) => n,
            None if self.is_cluster() => CLUSTER_PARTITIONS,
            None => 1,
        }
    }

    /// The retention of finished runs.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The retention of dead letters.
    pub fn dead_letter_retention(&self) -> Duration {
        self.letter_retention
    }
}

#[cfg(test)]
mod tests {
    use super::RedisConfig;

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        let config = RedisConfig::new("rediss+cluster://user:pw@10.0.0.1:7000,10.0.0.2:7001/?x=1");
        assert!(config.is_cluster());
        assert_eq!(
            config.cluster_nodes(),
            [
                "rediss://user:pw@10.0.0.1:7000/?x=1",
                "rediss://user:pw@10.0.0.2:7001/?x=1"
            ]
        );
        assert_eq!(config.partitions(), super::CLUSTER_PARTITIONS);
        let one = RedisConfig::new("redis://10.0.0.1:6379/");
        assert!(!one.is_cluster());
        assert_eq!(one.partitions(), 1);
        assert_eq!(one.with_partitions(4).partitions(), 4);
    }
}
