//! A private `redis-server` for tests: free port, temporary directory, optional AOF and
//! password, kill and restart; and a [`FaultProxy`] that loses replies and freezes
//! connections. Used by this crate's tests and by anyone testing a deployment.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] fails with a message naming
//! the package to install; tests must not skip silently.

mod cluster;
mod proxy;

pub use cluster::RedisCluster;
pub use proxy::FaultProxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `appendonly yes` with `appendfsync always`: writes survive a restart.
    pub appendonly: bool,
    /// `requirepass`.
    pub password: Option<String>,
    /// Serve TLS only, with this certificate and key (PEM files); clients are not asked
    /// for certificates.
    pub tls: Option<TlsFiles>,
    /// `cluster-enabled yes`: a node of a Redis Cluster (see [`RedisCluster`]).
    pub cluster: bool,
}

/// The server certificate and key for a TLS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate (PEM), also used as the CA file.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A running `redis-server` owned by the test; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    options: ServerOptions,
}

/// `redis-server` is missing or did not come up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub(crate) String);

const INSTALL_HINT: &str = "redis-server was not found on PATH: the Redis tests start their own \
server. Install it with `apt-get install redis-server` (Debian/Ubuntu) or your OS's redis package.";

impl RedisServer {
    /// Starts a server on a free port in a new temporary directory.
    ///
    /// # Errors
    /// A [`ServerError`] naming the package to install when `redis-server` is missing, or
    /// saying why the server did not answer.
    pub fn start(options: ServerOptions) -> Result<Self, ServerError> {
        // Another process may bind the chosen port (or a cluster node's bus port) before the
        // server does: the server then exits, and starts again on another port.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port_for(options.cluster)?;
            let dir = std::env::temp_dir().join(format!(
                "floxide-redis-{}-{port}-{:x}",
                std::process::id(),
                Instant::now().elapsed().as_nanos() ^ u128::from(port) << 32
            ));
            std::fs::create_dir_all(&dir)
                .map_err(|e| ServerError(format!("cannot create {}: {e}", dir.display())))?;
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                options: options.clone(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 5 && e.0.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a server, panicking with the install hint when it cannot: for tests.
    pub fn start_or_panic(options: ServerOptions) -> Self {
        match RedisServer::start(options) {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            cmd.arg("--requirepass").arg(password);
            if self.options.cluster {
                cmd.arg("--masterauth").arg(password);
            }
        }
        if self.options.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                // A replica may always take over (a fresh replica's data age would stop it).
                .args(["--cluster-replica-validity-factor", "0"])
                // Replicas sync at once, not after the default 5 s wait for company.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--cluster-config-file")
                .arg(self.dir.join("nodes.conf"));
        }
        if self.options.cluster && self.options.tls.is_some() {
            // The cluster bus and replication speak TLS too.
            cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        if let Some(tls) = &self.options.tls {
            // TLS only: the plain port is the TLS port.
            cmd.arg("--port")
                .arg("0")
                .arg("--tls-port")
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.cert)
                .arg("--tls-auth-clients")
                .arg("no");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ServerError(INSTALL_HINT.to_owned())
            } else {
                ServerError(format!("cannot start redis-server: {e}"))
            }
        })?;
        spawn_watchdog(child.id(), &self.dir);
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.check_alive()?;
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // The port answers; the server may still exit (its cluster bus port was
                // taken), or the answer came from another process that holds the port.
                std::thread::sleep(Duration::from_millis(50));
                return self.check_alive();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ServerError(format!(
            "redis-server did not listen on port {} within 10 s",
            self.port
        )))
    }

    /// An error with the server's log when it has exited.
    fn check_alive(&mut self) -> Result<(), ServerError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(ServerError(format!(
                    "redis-server exited with {status}:\n{log}"
                )));
            }
        }
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/` (`rediss://` for a TLS server; without credentials).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL (no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill)).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the server (and removes its directory) once this process is gone, even when the
/// server is never dropped (e.g. held in a `static`) or the test process is killed. The
/// watchdog also ends as soon as the server is gone.
fn spawn_watchdog(server_pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {server} 2>/dev/null; do sleep 0.5; done; \
         if ! kill -0 {me} 2>/dev/null; then kill -9 {server} 2>/dev/null; rm -rf '{dir}'; fi",
        me = std::process::id(),
        server = server_pid,
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A free port; for a cluster node one whose cluster bus port (10,000 higher, at most 65,535)
/// is free too.
fn free_port_for(cluster: bool) -> Result<u16, ServerError> {
    for _ in 0..100 {
        let port = free_port()?;
        if !cluster || (port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return Ok(port);
        }
    }
    Err(ServerError(
        "no free port pair for a cluster node (port and port + 10000)".to_owned(),
    ))
}

pub(crate) fn free_port() -> Result<u16, ServerError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ServerError(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ServerError(format!("no free port: {e}")))
}
