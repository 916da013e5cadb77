//! A private PostgreSQL server for tests: `initdb` in a temporary directory, `pg_ctl start`
//! on a free port with its socket in that directory, stopped (and the directory removed) on
//! drop. Never the server that may run on the standard port.
//!
//! The binaries are found on `PATH`, in `pg_config --bindir` or in Debian's
//! `/usr/lib/postgresql/<version>/bin`; when they are missing,
//! [`PostgresServer::start`] fails with a message naming the package to install. PostgreSQL
//! refuses to run as root: a test run as root starts the server as the `postgres` user (the
//! OS package creates it) through `runuser`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const INSTALL_HINT: &str = "the PostgreSQL server binaries (initdb, pg_ctl) were not found on \
PATH, in `pg_config --bindir` or in /usr/lib/postgresql/*/bin: the PostgreSQL tests start their \
own server. Install them with `apt-get install postgresql` (Debian/Ubuntu) or your OS's \
PostgreSQL server package.";

/// The server could not be found or started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(String);

/// A running PostgreSQL server owned by the test; stopped and removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server's commands as this user (when the tests run as root).
    run_as: Option<String>,
    running: bool,
}

impl PostgresServer {
    /// Creates a cluster in a new temporary directory and starts it on a free port. Its
    /// superuser is `floxide`, trusted without a password, and `fsync` is off: a commit
    /// survives the server's crash (`stop_immediately`), not the machine's.
    ///
    /// # Errors
    /// A [`ServerError`] naming the package to install when the binaries are missing, or
    /// saying why the server did not start (with its log).
    pub fn start() -> Result<Self, ServerError> {
        let bin = find_bin()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "floxide-pg-{}-{port}-{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServerError(format!("cannot create {}: {e}", dir.display())))?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let mut server = PostgresServer {
            bin,
            dir,
            port,
            run_as,
            running: false,
        };
        if let Some(user) = &server.run_as {
            let chown = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(&server.dir)
                .output()
                .map_err(|e| ServerError(format!("chown of the test server's directory: {e}")))?;
            check(&chown, "chown of the test server's directory")?;
        }
        let data = server.data_dir();
        let init = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "floxide",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(|e| ServerError(format!("running initdb: {e}")))?;
        check(&init, "initdb")?;
        server.start_again()?;
        Ok(server)
    }

    /// Starts a server, panicking with the install hint when it cannot: for tests.
    pub fn start_or_panic() -> Self {
        match PostgresServer::start() {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    /// A URL of the `postgres` database as the superuser `floxide`.
    pub fn url(&self) -> String {
        format!("postgres://floxide@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    ///
    /// # Errors
    /// When `pg_ctl` fails.
    pub fn stop_immediately(&mut self) -> Result<(), ServerError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .map_err(|e| ServerError(format!("running pg_ctl stop: {e}")))?;
        self.running = false;
        check(&out, "pg_ctl stop")
    }

    /// Starts the (stopped) server again on the same port and data.
    ///
    /// # Errors
    /// When it does not start (the message holds its log).
    pub fn start_again(&mut self) -> Result<(), ServerError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .arg("-o")
            .arg(options)
            .args(["-w", "-t", "60", "start"])
            .output()
            .map_err(|e| ServerError(format!("running pg_ctl start: {e}")))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            return Err(ServerError(format!(
                "the test PostgreSQL did not start: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        self.running = true;
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            guard(pid, &self.dir);
        }
        Ok(())
    }

    /// Makes the server accept TLS connections only, with this certificate and key (PEM),
    /// and restarts it.
    ///
    /// # Errors
    /// When the files cannot be written or the server does not start again.
    pub fn require_tls(&mut self, cert_pem: &str, key_pem: &str) -> Result<(), ServerError> {
        let data = self.data_dir();
        let write = |name: &str, text: &str| {
            std::fs::write(data.join(name), text)
                .map_err(|e| ServerError(format!("cannot write {name}: {e}")))
        };
        write("server.crt", cert_pem)?;
        write("server.key", key_pem)?;
        write(
            "pg_hba.conf",
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| ServerError(format!("cannot read postgresql.conf: {e}")))?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text)
            .map_err(|e| ServerError(format!("cannot write postgresql.conf: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .map_err(|e| ServerError(format!("cannot protect server.key: {e}")))?;
        }
        if let Some(user) = &self.run_as {
            let chown = Command::new("chown")
                .arg(user)
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .arg(data.join("pg_hba.conf"))
                .output()
                .map_err(|e| ServerError(format!("chown of the TLS files: {e}")))?;
            check(&chown, "chown of the TLS files")?;
        }
        self.stop_immediately()?;
        self.start_again()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `program` of the server's binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop_immediately();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the server (immediate shutdown) and removes its directory once this process has
/// exited, even when the server value is never dropped (held in a `static`, or the test
/// process killed); ends by itself when the server stops first.
fn guard(postmaster: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do kill -0 {postmaster} 2>/dev/null || exit 0; \
         sleep 0.5; done; kill -QUIT {postmaster} 2>/dev/null; sleep 1; rm -rf '{dir}'",
        test = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// The directory holding `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, ServerError> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|dir| has_server_bins(dir)));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|dir| has_server_bins(dir));
    // Debian and Ubuntu keep them in a versioned directory off PATH: take the newest.
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version: u32 = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, dir)| has_server_bins(dir))
                .max_by_key(|(version, _)| *version)
                .map(|(_, dir)| dir)
        });
    from_pg_config
        .or(debian)
        .ok_or_else(|| ServerError(INSTALL_HINT.to_owned()))
}

fn has_server_bins(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16, ServerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ServerError(format!("no free port: {e}")))
}

fn check(out: &Output, what: &str) -> Result<(), ServerError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(ServerError(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
