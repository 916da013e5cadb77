//! [`RedisCluster`]: a private Redis Cluster of six `redis-server`s (three masters, three
//! replicas) for tests, with the faults a cluster meets: slot migrations and failovers.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisServer, ServerError, ServerOptions, TlsFiles};

const CLI_HINT: &str = "redis-cli was not found on PATH: the Redis Cluster tests join their \
servers with it. Install it with `apt-get install redis-server` (Debian/Ubuntu; it brings \
redis-tools) or your OS's redis package.";

/// Six `redis-server`s with `cluster-enabled yes` on free ports, joined by
/// `redis-cli --cluster create … --cluster-replicas 1`; every server is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `requirepass` (and `masterauth`) of every node.
    password: Option<String>,
    /// The nodes serve TLS only (clients, replication and the cluster bus), with these files.
    tls: Option<TlsFiles>,
}

impl RedisCluster {
    /// Starts the six servers and joins them; returns once every slot is served.
    ///
    /// # Errors
    /// A [`ServerError`] naming the package to install when `redis-server` or `redis-cli`
    /// is missing, or saying why the cluster did not form.
    pub fn start() -> Result<Self, ServerError> {
        RedisCluster::start_with(ServerOptions::default())
    }

    /// [`start`](Self::start) with every node started with `options` (`cluster` is implied):
    /// a `password` is also each replica's `masterauth`; with `tls` the nodes serve TLS only,
    /// to clients, to their replicas and on the cluster bus. The certificate files must stay
    /// in place while the cluster runs.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with(options: ServerOptions) -> Result<Self, ServerError> {
        let options = ServerOptions {
            cluster: true,
            ..options
        };
        let nodes = (0..6)
            .map(|_| RedisServer::start(options.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster {
            nodes,
            password: options.password,
            tls: options.tls,
        };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        cluster.cli(&create)?;
        cluster.wait_stable(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Starts the cluster, panicking with the install hint when it cannot: for tests.
    pub fn start_or_panic() -> Self {
        match RedisCluster::start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }

    /// The nodes' URLs (`redis://127.0.0.1:<port>/`), seeds for `RedisConfig::cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `redis+cluster://` (`rediss+cluster://` for TLS) with every node, for
    /// `RedisConfig::new` and the `floxide` tool.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}/", hosts.join(","))
    }

    /// Runs `redis-cli <args>` on every live node (for example `ACL SETUSER …`, which each
    /// node keeps for itself); the outputs.
    ///
    /// # Errors
    /// When `redis-cli` fails on a node.
    pub fn on_every_node(&self, args: &[&str]) -> Result<Vec<String>, ServerError> {
        self.nodes
            .iter()
            .map(|node| {
                let mut all = vec!["-p".to_owned(), node.port().to_string()];
                all.extend(args.iter().map(|a| (*a).to_owned()));
                self.cli(&all)
            })
            .collect()
    }

    /// The ports of the nodes that are masters now.
    ///
    /// # Errors
    /// When no live node answers.
    pub fn master_ports(&self) -> Result<Vec<u16>, ServerError> {
        Ok(serving_masters(&self.cluster_nodes()?)
            .into_iter()
            .map(|(port, _)| port)
            .collect())
    }

    /// Kills the master serving `slot` with SIGKILL and waits until its replica took over
    /// and every slot is served again; returns the killed node's port.
    ///
    /// # Errors
    /// When the failover does not complete within 30 s.
    pub fn kill_master_of(&mut self, slot: u16) -> Result<u16, ServerError> {
        let port = self.master_of(slot)?;
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .master_of(slot)
                .is_ok_and(|p| p != port && self.slot_served(slot))
            {
                return self.wait_stable(Duration::from_secs(30)).map(|()| port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ServerError(format!(
            "no replica took over slot {slot} within 30 s after its master (port {port}) was killed"
        )))
    }

    /// Moves `count` slots from the master serving `slot` to another master with
    /// `redis-cli --cluster reshard`, keys included (a real slot migration); blocks until
    /// it is done.
    ///
    /// # Errors
    /// When `redis-cli` fails.
    pub fn reshard_from(&self, slot: u16, count: u32) -> Result<(), ServerError> {
        let from = self.master_of(slot)?;
        let to = self
            .master_ports()?
            .into_iter()
            .find(|p| *p != from)
            .ok_or_else(|| ServerError("no other master to move slots to".to_owned()))?;
        let (from_id, to_id) = (self.node_id(from)?, self.node_id(to)?);
        let args: Vec<String> = vec![
            "--cluster".into(),
            "reshard".into(),
            format!("127.0.0.1:{to}"),
            "--cluster-from".into(),
            from_id,
            "--cluster-to".into(),
            to_id,
            "--cluster-slots".into(),
            count.to_string(),
            "--cluster-yes".into(),
            "--cluster-pipeline".into(),
            "10".into(),
        ];
        self.cli(&args)?;
        self.wait_stable(Duration::from_secs(30))
    }

    /// The port of the master serving `slot`.
    ///
    /// # Errors
    /// When no live node answers or the slot is not served.
    pub fn master_of(&self, slot: u16) -> Result<u16, ServerError> {
        serving_masters(&self.cluster_nodes()?)
            .into_iter()
            .find(|(_, slots)| slots.iter().any(|range| range.contains(&slot)))
            .map(|(port, _)| port)
            .ok_or_else(|| ServerError(format!("no live master serves slot {slot}")))
    }

    fn node_id(&self, port: u16) -> Result<String, ServerError> {
        self.cli(&[
            "-p".to_owned(),
            port.to_string(),
            "cluster".into(),
            "myid".into(),
        ])
        .map(|id| id.trim().to_owned())
    }

    /// `CLUSTER NODES` from the first live node.
    fn cluster_nodes(&self) -> Result<String, ServerError> {
        let mut last = ServerError("no node of the cluster is alive".to_owned());
        for node in &self.nodes {
            match self.cli(&[
                "-p".into(),
                node.port().to_string(),
                "cluster".into(),
                "nodes".into(),
            ]) {
                Ok(text) if !text.trim().is_empty() => return Ok(text),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether every live node says `cluster_state:ok`.
    fn all_ok(&self) -> bool {
        let live: Vec<u16> = self
            .master_ports()
            .unwrap_or_default()
            .into_iter()
            .collect();
        !live.is_empty()
            && live.iter().all(|p| {
                self.cli(&["-p".into(), p.to_string(), "cluster".into(), "info".into()])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
    }

    fn slot_served(&self, slot: u16) -> bool {
        self.master_of(slot).is_ok()
    }

    /// Whether every live replica's link to its master is up (its initial sync is done:
    /// before that, a failover would lose everything its master holds).
    fn replicas_synced(&self) -> bool {
        let Ok(nodes) = self.cluster_nodes() else {
            return false;
        };
        nodes
            .lines()
            .filter(|l| l.contains("slave") && !l.contains("fail"))
            .filter_map(|l| port_of(l.split_whitespace().nth(1)?))
            .all(|port| {
                self.cli(&[
                    "-p".into(),
                    port.to_string(),
                    "info".into(),
                    "replication".into(),
                ])
                .is_ok_and(|info| info.contains("master_link_status:up"))
            })
    }

    /// Waits until every master says the cluster is ok and agrees on the configuration, and
    /// every replica is in sync.
    fn wait_stable(&self, within: Duration) -> Result<(), ServerError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.all_ok() && self.agreed() && self.replicas_synced() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ServerError(format!(
            "the Redis Cluster was not stable within {within:?}:\n{}",
            self.cluster_nodes().unwrap_or_default()
        )))
    }

    /// Whether `redis-cli --cluster check` finds every slot covered and the nodes agreeing.
    fn agreed(&self) -> bool {
        let Some(port) = self.master_ports().ok().and_then(|p| p.first().copied()) else {
            return false;
        };
        self.cli(&[
            "--cluster".into(),
            "check".into(),
            format!("127.0.0.1:{port}"),
        ])
        .is_ok_and(|out| out.contains("[OK] All 16384 slots covered") && !out.contains("[ERR]"))
    }
}

impl RedisCluster {
    /// Runs `redis-cli` with `args` against this cluster's nodes; its standard output.
    fn cli(&self, args: &[String]) -> Result<String, ServerError> {
        let mut all = Vec::new();
        if let Some(password) = &self.password {
            all.extend([
                "--no-auth-warning".to_owned(),
                "-a".to_owned(),
                password.clone(),
            ]);
        }
        if let Some(tls) = &self.tls {
            all.extend(["--tls".to_owned(), "--cacert".to_owned()]);
            all.push(tls.cert.display().to_string());
        }
        all.extend_from_slice(args);
        cli(&all)
    }
}

/// The live masters that serve slots, from `CLUSTER NODES` text: each one's port and slot
/// ranges. (A node just joined is a master without slots until it becomes a replica.)
fn serving_masters(nodes: &str) -> Vec<(u16, Vec<std::ops::RangeInclusive<u16>>)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let ranges: Vec<_> = fields
                .iter()
                .skip(8)
                .filter_map(|range| {
                    let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                    match (ends.next(), ends.next()) {
                        (Some(a), Some(b)) => Some(a..=b),
                        (Some(a), None) => Some(a..=a),
                        _ => None,
                    }
                })
                .collect();
            (!ranges.is_empty()).then(|| Some((port_of(fields.get(1)?)?, ranges)))?
        })
        .collect()
}

/// The port of a `CLUSTER NODES` address (`127.0.0.1:7000@17000`).
fn port_of(address: &str) -> Option<u16> {
    address.split('@').next()?.rsplit(':').next()?.parse().ok()
}

/// Runs `redis-cli` with `args`; its standard output.
fn cli(args: &[String]) -> Result<String, ServerError> {
    let out = Command::new("redis-cli").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ServerError(CLI_HINT.to_owned())
        } else {
            ServerError(format!("cannot run redis-cli: {e}"))
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(ServerError(format!(
            "redis-cli {} failed: {}{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}
