//! A worker process for the fault tests (`tests/faults.rs`): the tests start several of these,
//! kill them with SIGKILL, stop them with SIGSTOP, restart Redis under them, and check that
//! every run still completes with each step's effects applied once.
//!
//! The workflow is `a → b → c` over a context holding an `EventLog<String>`. Each node:
//! 1. counts its execution: `INCR <prefix>started:<run>:<node>` (delivery is at-least-once, so
//!    a counter above 1 is a duplicate execution; its context effect must still appear once);
//! 2. sleeps `FAULT_STEP_MS` (default 20), or — when the test set the flag key
//!    `<prefix>stall:<node>` (taken with `GETDEL`, so only one execution sees it) — writes its
//!    process id to `<prefix>stalled`, sleeps the flag's value in ms and then counts
//!    `INCR <prefix>finished:<run>:<node>` synchronously (no await between the sleep and the
//!    step's commit);
//! 3. appends `"<node>:<input>"` to the context and passes `input + 1` on.
//!
//! Settings: the usual worker flags (`--backend URL --concurrency N --worker-name NAME`, see
//! `floxide::distributed::WorkerArgs`) and the environment variables `FAULT_PREFIX` (key
//! prefix, default `fault:`), `FAULT_LEASE_MS` (lease timeout, default 1000; heartbeats every
//! quarter of it), `FAULT_STEP_MS` and `FAULT_WATCH_PARENT=1` (exit when the parent process
//! is gone). (`run_worker_main` owns the command line, so these settings are environment
//! variables rather than flags.)
//!
//! ```text
//! FAULT_PREFIX=t1: cargo run -p floxide-redis --example fault_worker -- --backend redis://127.0.0.1:6379/
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use floxide::*;
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
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

/// What the nodes share: the Redis connection for the counters and the settings.
#[derive(Clone)]
pub struct Env(Arc<EnvInner>);

struct EnvInner {
    conn: floxide_redis::RedisConnection,
    /// For a synchronous counter (one server only: not for a `redis+cluster://` URL).
    client: Option<::redis::Client>,
    prefix: String,
    step: Duration,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("prefix", &self.0.prefix)
            .field("step", &self.0.step)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// The nodes' environment: counters through `client`'s connection, under `prefix`.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(
        client: &RedisClient,
        url: &str,
        prefix: &str,
        step: Duration,
    ) -> Result<Self, FloxideError> {
        Ok(Env(Arc::new(EnvInner {
            conn: client.connection(),
            client: if client.config().is_cluster() {
                None
            } else {
                Some(::redis::Client::open(url).map_err(|e| FloxideError::Generic(e.to_string()))?)
            },
            prefix: prefix.to_owned(),
            step,
        })))
    }

    /// Counts this execution and returns the stall (ms) the test asked for, if any. The
    /// counters are best effort (retried while Redis restarts): they only report duplicates.
    async fn begin(&self, run: &str, node: &str) -> Option<u64> {
        let p = &self.0.prefix;
        // Two commands, not a pipeline: on a cluster the keys live in different slots.
        let mut counted = false;
        for _ in 0..50 {
            let mut conn = self.0.conn.clone();
            if !counted {
                counted = ::redis::cmd("INCR")
                    .arg(format!("{p}started:{run}:{node}"))
                    .query_async::<i64>(&mut conn)
                    .await
                    .is_ok();
            }
            if counted {
                if let Ok(stall) = ::redis::cmd("GETDEL")
                    .arg(format!("{p}stall:{node}"))
                    .query_async::<Option<u64>>(&mut conn)
                    .await
                {
                    return stall;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Says which process stalls (the test SIGSTOPs it).
    async fn announce_stall(&self) {
        let mut conn = self.0.conn.clone();
        let _: ::redis::RedisResult<()> = ::redis::cmd("SET")
            .arg(format!("{}stalled", self.0.prefix))
            .arg(std::process::id())
            .query_async(&mut conn)
            .await;
    }

    /// Counts a finished stalled execution without awaiting anything, so that nothing but the
    /// commit stands between the end of the node and the end of the step.
    fn finished_blocking(&self, run: &str, node: &str) {
        if let Some(Ok(mut conn)) = self.0.client.as_ref().map(::redis::Client::get_connection) {
            let _: ::redis::RedisResult<i64> = ::redis::cmd("INCR")
                .arg(format!("{}finished:{run}:{node}", self.0.prefix))
                .query(&mut conn);
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
        match self.env.begin(&run, self.name).await {
            Some(stall_ms) => {
                self.env.announce_stall().await;
                tokio::time::sleep(Duration::from_millis(stall_ms)).await;
                self.env.finished_blocking(&run, self.name);
            }
            None => tokio::time::sleep(self.env.0.step).await,
        }
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
        let prefix = std::env::var("FAULT_PREFIX").unwrap_or_else(|_| "fault:".to_owned());
        let lease = env_ms("FAULT_LEASE_MS", 1000)?;
        let step = env_ms("FAULT_STEP_MS", 20)?;
        let client = RedisClient::new(RedisConfig::new(&url).with_key_prefix(&prefix)).await?;
        let env = Env::new(&client, &url, &prefix, step)?;
        Fault::new(&env)
            .worker(RedisBackend::new(client))
            .lease_timeout(lease)
            .heartbeat_interval(lease / 4)
            .idle_sleep_duration(Duration::from_millis(500))
            .build()
    })
    .await
}
