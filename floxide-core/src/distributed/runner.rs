//! A ready `main` for worker processes: flags and environment, a worker pool, graceful
//! shutdown on SIGTERM/SIGINT, and an exit code.
//!
//! ```text
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     floxide::distributed::run_worker_main(|args| async move {
//!         let backend = floxide_redis::RedisBackend::connect(args.backend_url()?).await?;
//!         MyFlow::default().worker(backend).build()
//!     })
//!     .await
//! }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::distributed::metrics::sample_queue_stats;
use crate::distributed::{DistributedError, DistributedWorker, WorkerPool};
use crate::{Context, FloxideError, Merge, Workflow};

/// The settings of a worker process, from flags or environment variables (flags win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// `--backend URL` / `FLOXIDE_BACKEND_URL` (also `--redis` / `FLOXIDE_REDIS_URL`).
    pub backend_url: Option<String>,
    /// `--concurrency N` / `FLOXIDE_CONCURRENCY`: concurrent steps of the process, split into one
    /// worker per core (or fewer) with an equal share of the slots (default 4).
    pub concurrency: usize,
    /// `--worker-name NAME` / `FLOXIDE_WORKER_NAME`: the prefix of the worker ids.
    pub worker_name: String,
    /// `--grace SECONDS` / `FLOXIDE_GRACE_SECS`: how long in-flight steps may finish on
    /// shutdown before they are released (default 30).
    pub grace: Duration,
    /// `--metrics-addr ADDR` / `FLOXIDE_METRICS_ADDR`: serve Prometheus metrics on `ADDR`
    /// (`host:port`; needs the `prometheus` feature).
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for WorkerArgs {
    fn default() -> Self {
        WorkerArgs {
            backend_url: None,
            concurrency: 4,
            worker_name: "worker".to_owned(),
            grace: Duration::from_secs(30),
            metrics_addr: None,
        }
    }
}

/// The environment variables a worker process reads (flags win over them).
#[cfg(feature = "runner")]
const ENVIRONMENT: &str =
    "environment: FLOXIDE_BACKEND_URL (or FLOXIDE_REDIS_URL), FLOXIDE_CONCURRENCY, \
FLOXIDE_WORKER_NAME, FLOXIDE_GRACE_SECS, FLOXIDE_METRICS_ADDR";

/// The command line of a worker process (parsed by clap; each flag overrides its variable).
#[cfg(feature = "runner")]
#[derive(Debug, clap::Parser)]
#[command(
    name = "worker",
    about = "A Floxide worker process: takes and executes its workflow's steps until SIGTERM.",
    disable_version_flag = true,
    after_help = ENVIRONMENT
)]
struct Flags {
    /// The backend: redis://…, rediss://…, redis+cluster://host:port,…, postgres://…
    #[arg(long = "backend", visible_alias = "redis", value_name = "URL")]
    backend: Option<String>,
    /// Concurrent steps of the process (default 4).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    concurrency: Option<usize>,
    /// The prefix of the worker ids (default `worker`).
    #[arg(long = "worker-name", value_name = "NAME")]
    worker_name: Option<String>,
    /// Seconds in-flight steps may take to finish on shutdown (default 30).
    #[arg(long, value_name = "SECONDS")]
    grace: Option<u64>,
    /// Serve Prometheus metrics on this address (needs the `prometheus` feature).
    #[arg(long = "metrics-addr", value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
}

#[cfg(feature = "runner")]
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number".to_owned()),
    }
}

impl WorkerArgs {
    /// Parses `args` (without the program name) over the values of `env`.
    ///
    /// # Errors
    /// An unknown flag, a missing value or a value that is not a number, with the usage text
    /// (also the help text, for `--help`).
    #[cfg(feature = "runner")]
    pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        use clap::Parser;
        let args = std::iter::once("worker".to_owned()).chain(args.into_iter().map(Into::into));
        let flags = Flags::try_parse_from(args).map_err(|e| e.render().to_string())?;
        let defaults = WorkerArgs::default();
        let concurrency = match (flags.concurrency, env("FLOXIDE_CONCURRENCY")) {
            (Some(n), _) => n,
            (None, Some(n)) => match number("FLOXIDE_CONCURRENCY", &n)? {
                0 => {
                    return Err(format!(
                        "FLOXIDE_CONCURRENCY must be at least 1\n{ENVIRONMENT}"
                    ))
                }
                n => n,
            },
            (None, None) => defaults.concurrency,
        };
        let grace = match (flags.grace, env("FLOXIDE_GRACE_SECS")) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, Some(g)) => Duration::from_secs(number("FLOXIDE_GRACE_SECS", &g)? as u64),
            (None, None) => defaults.grace,
        };
        let metrics_addr = match (flags.metrics_addr, env("FLOXIDE_METRICS_ADDR")) {
            (Some(addr), _) => Some(addr),
            (None, Some(a)) => Some(address("FLOXIDE_METRICS_ADDR", &a)?),
            (None, None) => None,
        };
        Ok(WorkerArgs {
            backend_url: flags
                .backend
                .or_else(|| env("FLOXIDE_BACKEND_URL"))
                .or_else(|| env("FLOXIDE_REDIS_URL")),
            concurrency,
            worker_name: flags
                .worker_name
                .or_else(|| env("FLOXIDE_WORKER_NAME"))
                .unwrap_or(defaults.worker_name),
            grace,
            metrics_addr,
        })
    }

    /// Parses the process's own arguments and environment.
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    #[cfg(feature = "runner")]
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::args().skip(1), |k| std::env::var(k).ok())
    }

    /// The backend URL.
    ///
    /// # Errors
    /// [`DistributedError::Build`] when none was given.
    pub fn backend_url(&self) -> Result<&str, FloxideError> {
        self.backend_url.as_deref().ok_or_else(|| {
            DistributedError::Build(
                "no backend URL: pass --backend URL or set FLOXIDE_BACKEND_URL".to_owned(),
            )
            .into()
        })
    }
}

#[cfg(feature = "runner")]
fn number(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{name}: `{value}` is not a whole number\n{ENVIRONMENT}"))
}

#[cfg(feature = "runner")]
fn address(name: &str, value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!(
            "{name}: `{value}` is not an address like 0.0.0.0:9000 or [::1]:9000\n{ENVIRONMENT}"
        )
    })
}

/// Splits `steps` concurrent steps into workers and slots per worker: as many workers as
/// cores (or fewer, so that every worker gets the same number of slots and the total is
/// exactly `steps`).
fn split_concurrency(steps: usize) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let steps = steps.max(1);
    let loops = (1..=steps.min(cores))
        .rev()
        .find(|l| steps % l == 0)
        .unwrap_or(1);
    (loops, steps / loops)
}

/// Runs a worker process: parses [`WorkerArgs`], serves metrics when asked to, builds the
/// worker with `build`, runs `concurrency` concurrent steps (one worker per core, each with
/// its share of the slots) until SIGTERM or SIGINT, then stops
/// gracefully (in-flight steps get the grace period, then are released to other workers).
///
/// Exits with 0 after a graceful stop, 2 on bad arguments (`--metrics-addr` without the
/// `prometheus` feature included), 1 when the metrics address cannot be served, the worker
/// cannot be built or a worker task fails. Needs the `runner` feature (on by default), which
/// parses the flags with clap.
#[cfg(feature = "runner")]
pub async fn run_worker_main<W, C, F, Fut>(build: F) -> ExitCode
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
    F: FnOnce(WorkerArgs) -> Fut,
    Fut: Future<Output = Result<DistributedWorker<W, C>, FloxideError>>,
{
    let args = match WorkerArgs::from_env() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    run_worker(args, build).await
}

/// [`run_worker_main`] with settings already parsed (for programs that read their own
/// arguments).
pub async fn run_worker<W, C, F, Fut>(args: WorkerArgs, build: F) -> ExitCode
where
    C: Context + Merge + 'static,
    W: Workflow<C> + 'static,
    F: FnOnce(WorkerArgs) -> Fut,
    Fut: Future<Output = Result<DistributedWorker<W, C>, FloxideError>>,
{
    let (concurrency, name, grace) = (args.concurrency, args.worker_name.clone(), args.grace);
    let metrics_addr = args.metrics_addr;
    if let Some(addr) = metrics_addr {
        if let Err(code) = serve_metrics(addr) {
            return code;
        }
    }
    let mut worker = match build(args).await {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("cannot start the worker: {error}");
            return ExitCode::from(1);
        }
    };
    let sampler = metrics_addr.map(|_| {
        let backend = Arc::clone(worker.backend());
        tokio::spawn(sample_queue_stats(backend, worker.workflow().name()))
    });
    // `concurrency` steps in all: one worker per core at most, each with an equal share of
    // the slots (its batches).
    let (loops, slots) = split_concurrency(concurrency);
    worker.set_concurrency(slots);
    let mut pool = WorkerPool::new(worker, loops)
        .with_id_prefix(name)
        .with_grace_period(grace);
    pool.start();
    tracing::info!(workers = ?pool.worker_ids(), "workers started");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight steps");
    let stopped = pool.try_stop().await;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker failed: {error}");
            ExitCode::from(1)
        }
    }
}

/// Installs the Prometheus exporter on `addr`; the exit code when that fails.
#[cfg(feature = "prometheus")]
fn serve_metrics(addr: SocketAddr) -> Result<(), ExitCode> {
    crate::distributed::install_prometheus_exporter(addr).map_err(|error| {
        eprintln!("cannot serve metrics on {addr}: {error}");
        ExitCode::from(1)
    })?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// Without the `prometheus` feature, `--metrics-addr` is a usage error.
#[cfg(not(feature = "prometheus"))]
fn serve_metrics(addr: SocketAddr) -> Result<(), ExitCode> {
    eprintln!(
        "--metrics-addr {addr}: this worker was built without Prometheus support; enable the \
         `prometheus` feature of floxide, or drop the flag"
    );
    Err(ExitCode::from(2))
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(all(test, feature = "runner"))]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_redis_alias_still_names_the_backend() {
        let args = WorkerArgs::parse(["--redis", "redis://a/"], env(&[])).unwrap();
        assert_eq!(args.backend_url.as_deref(), Some("redis://a/"));
    }

    #[test]
    fn flags_override_environment() {
        let args = WorkerArgs::parse(
            [
                "--concurrency",
                "8",
                "--backend=redis://h:1/",
                "--worker-name",
                "w",
            ],
            env(&[
                ("FLOXIDE_BACKEND_URL", "redis://env/"),
                ("FLOXIDE_CONCURRENCY", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(args.concurrency, 8);
        assert_eq!(args.backend_url.as_deref(), Some("redis://h:1/"));
        assert_eq!(args.worker_name, "w");
        let from_env = WorkerArgs::parse(
            Vec::<String>::new(),
            env(&[
                ("FLOXIDE_REDIS_URL", "redis://r/"),
                ("FLOXIDE_GRACE_SECS", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(from_env.backend_url.as_deref(), Some("redis://r/"));
        assert_eq!(from_env.grace, Duration::from_secs(5));
        assert_eq!(from_env.concurrency, 4);
    }

    #[test]
    fn bad_arguments_are_explained() {
        let e = WorkerArgs::parse(["--concurrency", "many"], env(&[])).unwrap_err();
        assert!(
            e.contains("'many'") && e.contains("not a whole number") && e.contains("--help"),
            "{e}"
        );
        let e = WorkerArgs::parse(["--frobnicate"], env(&[])).unwrap_err();
        assert!(e.contains("unexpected argument '--frobnicate'"), "{e}");
        let e = WorkerArgs::parse(["--backend"], env(&[])).unwrap_err();
        assert!(
            e.contains("a value is required for '--backend <URL>'"),
            "{e}"
        );
        let e = WorkerArgs::parse(["--concurrency", "0"], env(&[])).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = WorkerArgs::parse(Vec::<String>::new(), env(&[("FLOXIDE_CONCURRENCY", "0")]))
            .unwrap_err();
        assert!(e.contains("FLOXIDE_CONCURRENCY must be at least 1"), "{e}");
        let e = WorkerArgs::parse(["--metrics-addr", "localhost"], env(&[])).unwrap_err();
        assert!(e.contains("'localhost'"), "{e}");
        let e = WorkerArgs::parse(Vec::<String>::new(), env(&[("FLOXIDE_METRICS_ADDR", "x")]))
            .unwrap_err();
        assert!(e.contains("not an address"), "{e}");
        let help = WorkerArgs::parse(["--help"], env(&[])).unwrap_err();
        assert!(
            help.contains("--backend <URL>") && help.contains("FLOXIDE_BACKEND_URL"),
            "{help}"
        );
        assert!(WorkerArgs::default().backend_url().is_err());
    }

    #[test]
    fn the_metrics_address_comes_from_a_flag_or_the_environment() {
        let from_env = WorkerArgs::parse(
            Vec::<String>::new(),
            env(&[("FLOXIDE_METRICS_ADDR", "0.0.0.0:9000")]),
        )
        .unwrap();
        assert_eq!(from_env.metrics_addr, Some("0.0.0.0:9000".parse().unwrap()));
        let flag = WorkerArgs::parse(
            ["--metrics-addr=[::1]:9100"],
            env(&[("FLOXIDE_METRICS_ADDR", "0.0.0.0:9000")]),
        )
        .unwrap();
        assert_eq!(flag.metrics_addr, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(WorkerArgs::default().metrics_addr, None);
    }

    /// `cargo test -p floxide-core` builds without the feature (the workspace's test build
    /// has it, through the root package's dev-dependencies).
    #[cfg(not(feature = "prometheus"))]
    #[test]
    fn metrics_without_the_prometheus_feature_are_a_usage_error() {
        let addr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(serve_metrics(addr), Err(ExitCode::from(2)));
    }

    #[test]
    fn concurrency_splits_exactly_into_workers_and_slots() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        for steps in 1..=40 {
            let (loops, slots) = split_concurrency(steps);
            assert_eq!(loops * slots, steps, "{steps} steps");
            assert!(
                loops >= 1 && loops <= cores,
                "{steps} steps: {loops} workers"
            );
        }
        assert_eq!(split_concurrency(0), (1, 1));
    }
}
