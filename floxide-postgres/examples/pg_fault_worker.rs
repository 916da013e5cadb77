//! A worker process for the PostgreSQL fault tests (`tests/faults.rs`): the tests start several
//! of these, kill them with SIGKILL, stop PostgreSQL under them, cut their connections, and
//! check that every run still completes with each step's effects applied once.
//!
//! The workflow is `a → b → c` over a context holding an `EventLog<String>`. Each node counts
//! its execution in the table `fault_executions` of the deployment's schema (delivery is
//! at-least-once, so a count above 1 is a duplicate execution; its context effect must still
//! appear once), sleeps `FAULT_STEP_MS` (default 20), appends `"<node>:<input>"` to the
//! context and passes `input + 1` on.
//!
//! Settings: the usual worker flags (`--backend postgres://… --concurrency N --worker-name
//! NAME`, see `floxide::distributed::WorkerArgs`) and the environment variables
//! `FAULT_SCHEMA` (default `fault`), `FAULT_LEASE_MS` (lease timeout, default 1000; heartbeats
//! every quarter of it), `FAULT_STEP_MS` and `FAULT_WATCH_PARENT=1` (exit when the parent
//! process is gone).
//!
//! ```text
//! FAULT_SCHEMA=t1 cargo run -p floxide-postgres --example pg_fault_worker -- --backend postgres://postgres@127.0.0.1/test
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use floxide::*;
use floxide_postgres::{PostgresBackend, PostgresConfig};
use serde::{Deserialize, Serialize};

#[path = "../../testkit/worker_env.rs"]
mod worker_env;
use worker_env::{env_ms, watch_parent};

/// The context: one event per committed step.
#[derive(Debug, Clone, Default, Merge, Serialize, Deserialize)]
pub struct Log {
    /// `"<node>:<input>"` per committed step.
    pub events: EventLog<String>,
}

/// What the nodes share: a connection pool for the execution counters, and the step time.
#[derive(Clone)]
pub struct Env(Arc<EnvInner>);

struct EnvInner {
    pool: deadpool_postgres::Pool,
    step: Duration,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("step", &self.0.step)
            .finish_non_exhaustive()
    }
}

/// The counters' table, created when missing.
pub const COUNTERS: &str = "CREATE TABLE IF NOT EXISTS fault_executions (
    run_id text NOT NULL, node text NOT NULL, count integer NOT NULL,
    PRIMARY KEY (run_id, node))";

impl Env {
    /// The nodes' environment: counters in `schema` of the database at `url`.
    ///
    /// # Errors
    /// An invalid URL or schema.
    pub fn new(url: &str, schema: &str, step: Duration) -> Result<Self, FloxideError> {
        let invalid = |e: String| FloxideError::Generic(e);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| invalid(format!("{e}")))?;
        config.options(format!("-c search_path={schema}"));
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(4)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Env(Arc::new(EnvInner { pool, step })))
    }

    /// Counts this execution (best effort, retried while the server is away: the counters only
    /// report duplicates).
    async fn count(&self, run: &str, node: &str) {
        for _ in 0..100 {
            if let Ok(client) = self.0.pool.get().await {
                let counted = client
                    .execute(
                        "INSERT INTO fault_executions (run_id, node, count) VALUES ($1, $2, 1) \
                         ON CONFLICT (run_id, node) DO UPDATE \
                         SET count = fault_executions.count + 1",
                        &[&run, &node],
                    )
                    .await;
                if counted.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

node! {
    /// Counts its execution, works a while, records `"<name>:<n>"` and passes `n + 1` on.
    pub struct Work { name: &'static str, env: Env };
    context = Log;
    input = u64;
    output = u64;
    |ctx, n| {
        let run = current_step().map(|s| s.run_id).unwrap_or_default();
        self.env.count(&run, self.name).await;
        tokio::time::sleep(self.env.0.step).await;
        ctx.events.append(format!("{}:{n}", self.name));
        Ok(Transition::Next(n + 1))
    }
}

workflow! {
    /// `a → b → c`.
    pub struct Fault { a: Work, b: Work, c: Work }
    context = Log;
    start = a;
    edges { a => [b]; b => [c]; c => []; }
}

impl Fault {
    /// The workflow with its nodes sharing `env`.
    pub fn new(env: &Env) -> Self {
        let work = |name| Work {
            name,
            env: env.clone(),
        };
        Fault {
            a: work("a"),
            b: work("b"),
            c: work("c"),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    watch_parent();
    run_worker_main(|args| async move {
        let url = args.backend_url()?.to_owned();
        let schema = std::env::var("FAULT_SCHEMA").unwrap_or_else(|_| "fault".to_owned());
        let lease = env_ms("FAULT_LEASE_MS", 1000)?;
        let step = env_ms("FAULT_STEP_MS", 20)?;
        let backend =
            PostgresBackend::connect_with(PostgresConfig::new(&url).with_schema(&schema)).await?;
        let env = Env::new(&url, &schema, step)?;
        Fault::new(&env)
            .worker(backend)
            .lease_timeout(lease)
            .heartbeat_interval(lease / 4)
            .build()
    })
    .await
}
