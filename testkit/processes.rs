//! Worker processes for the backends' fault tests (included by `floxide-redis/tests/faults.rs`
//! and `floxide-postgres/tests/faults.rs` with `#[path]`): an example binary located or built,
//! a guard that SIGKILLs its processes on every path, signals, a seeded generator, and the
//! serial, time-bounded frame each test runs in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// `target/<profile>/examples/<example>` of `package` (whose manifest directory is `manifest`),
/// built when it is missing or older than its source or than the test binary.
pub fn locate_or_build(package: &str, manifest: &str, example: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // Tests live in target/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let bin = profile_dir
        .join("examples")
        .join(format!("{example}{}", std::env::consts::EXE_SUFFIX));
    let source = Path::new(manifest).join(format!("examples/{example}.rs"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    // Newer than its source and than this test binary: the test binary is rebuilt whenever
    // the libraries change, and an example built before that would run their old code (cargo
    // is asked otherwise; it does nothing when the example is up to date).
    let fresh = match (modified(&bin), modified(&source)) {
        (Some(b), Some(s)) => b >= s && modified(&exe).is_none_or(|t| b >= t),
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", package, "--example", example])
        .current_dir(manifest);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    eprintln!("faults: building the worker binary: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build {example}: {e}"))?;
    if !status.success() || !bin.exists() {
        return Err(format!(
            "`cargo build -p {package} --example {example}` failed ({status}); expected {}",
            bin.display()
        ));
    }
    Ok(bin)
}

/// [`locate_or_build`], once per test binary (`cell` holds the answer); panics with its error.
pub fn built_once(
    cell: &'static std::sync::OnceLock<Result<PathBuf, String>>,
    package: &str,
    manifest: &str,
    example: &str,
) -> &'static Path {
    match cell.get_or_init(|| locate_or_build(package, manifest, example)) {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// How a fault worker process runs: its backend, steps at once, lease and step length.
#[derive(Debug, Clone)]
pub struct FaultWorker {
    /// The backend URL (`--backend`).
    pub url: String,
    /// Steps the process runs at once (`--concurrency`).
    pub concurrency: usize,
    /// The lease, in ms (`FAULT_LEASE_MS`).
    pub lease_ms: u64,
    /// How long each step sleeps, in ms (`FAULT_STEP_MS`).
    pub step_ms: u64,
}

impl FaultWorker {
    /// The command for process `<name><n>` of `bin`: none of the runner's `FLOXIDE_*` settings
    /// come from the test's environment, and the process exits when its parent (the test) does.
    pub fn command(&self, bin: &Path, name: &str, n: usize) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(["--backend", &self.url])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--worker-name", &format!("{name}{n}")])
            .env_remove("FLOXIDE_BACKEND_URL")
            .env_remove("FLOXIDE_REDIS_URL")
            .env_remove("FLOXIDE_CONCURRENCY")
            .env_remove("FLOXIDE_WORKER_NAME")
            .env_remove("FLOXIDE_GRACE_SECS")
            .env("FAULT_LEASE_MS", self.lease_ms.to_string())
            .env("FAULT_STEP_MS", self.step_ms.to_string())
            .env("FAULT_WATCH_PARENT", "1");
        cmd
    }
}

/// The worker processes of a test. Dropping it kills them all (SIGKILL), on every path; when
/// the test failed it prints the tail of each worker's stderr.
pub struct Workers {
    dir: PathBuf,
    command: Box<dyn Fn(usize) -> Command + Send>,
    children: Vec<Child>,
    spawned: usize,
}

impl Workers {
    /// Processes started by `command(n)` for the `n`-th one (its stdin and stdout go nowhere,
    /// its stderr to a log file of the test).
    pub fn new(name: &str, command: impl Fn(usize) -> Command + Send + 'static) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "floxide-faults-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create the workers' log directory");
        Workers {
            dir,
            command: Box::new(command),
            children: Vec::new(),
            spawned: 0,
        }
    }

    /// Starts one more worker process; returns its pid.
    pub fn spawn(&mut self) -> u32 {
        self.spawn_with(&[])
    }

    /// Starts one more worker process with `args` added to its command; returns its pid.
    pub fn spawn_with(&mut self, args: &[&str]) -> u32 {
        let n = self.spawned;
        self.spawned += 1;
        let log = std::fs::File::create(self.dir.join(format!("worker-{n}.log")))
            .expect("create a worker log");
        let child = (self.command)(n)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a worker process");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Live workers.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// SIGKILLs the `i`-th live worker and reaps it; returns its pid.
    pub fn kill(&mut self, i: usize) -> u32 {
        let mut child = self.children.remove(i);
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        pid
    }

    /// Whether the worker `pid` is still running: not exited, and `kill -0` reaches it.
    pub fn alive(&mut self, pid: u32) -> bool {
        let Some(child) = self.children.iter_mut().find(|c| c.id() == pid) else {
            return false;
        };
        matches!(child.try_wait(), Ok(None)) && signal(pid, "-0")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill(); // SIGKILL also ends a SIGSTOPped process
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for n in 0..self.spawned {
                let path = self.dir.join(format!("worker-{n}.log"));
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                if !tail.is_empty() {
                    eprintln!("--- {} (last lines, newest first)", path.display());
                    for line in tail {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `kill <sig> <pid>`, without libc.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A small xorshift generator: which worker dies is random, the seed is printed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock and the pid.
    pub fn seeded() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ (u64::from(std::process::id()) << 32);
        Rng(seed | 1)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One fault test at a time: they measure leases in real time on a machine that may be busy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `body` under the serial lock and the time bound `limit`, and prints its one-line
/// summary.
pub async fn bounded<F: std::future::Future<Output = String>>(
    name: &str,
    limit: Duration,
    body: F,
) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let summary = tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within {limit:?}"));
    eprintln!("faults/{name}: {summary} [{:.1?}]", started.elapsed());
}
