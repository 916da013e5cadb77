//! Connecting, dispatching a command, and printing its result as a table or as JSON.

use std::io::Write;

use std::collections::BTreeMap;
use std::time::SystemTime;

use floxide_core::distributed::overview::{RunProgress, Stats};
use floxide_core::distributed::{Backend, DistributedError, RunAction};
use floxide_core::ItemId;
use floxide_postgres::{PostgresBackend, PostgresBackendError, PostgresConfig};
use floxide_redis::{RedisBackend, RedisBackendError, RedisClient, RedisConfig};
use serde::Serialize;

use crate::args::{Cli, Command, DlqCommand, GraphsCommand, RunsCommand};
use crate::{dlq, graphs, runs, stats, workers};

/// Why a command failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Redis could not be reached.
    #[error(transparent)]
    Connect(#[from] RedisBackendError),
    /// PostgreSQL could not be reached (or its schema is not one this tool knows).
    #[error(transparent)]
    ConnectPostgres(#[from] PostgresBackendError),
    /// The backend URL names no backend this tool knows.
    #[error(
        "unknown backend URL scheme `{0}`: use redis://… or rediss://… (Redis), postgres://… or \
         postgresql://… (PostgreSQL)"
    )]
    UnknownScheme(String),
    /// The backend refused or failed the request (unknown run, invalid state, ...).
    #[error(transparent)]
    Backend(#[from] DistributedError),
    /// `floxide ui` would listen on a non-loopback address without a token.
    #[error(
        "refusing to serve the dashboard on {0} without a token: pass --token (or set \
         FLOXIDE_UI_TOKEN), or listen on 127.0.0.1"
    )]
    UiUnsafe(std::net::SocketAddr),
    /// No registered graph of that workflow (or with that hash).
    #[error(
        "no registered graph of workflow `{workflow}`{}{}",
        hash.as_ref().map(|h| format!(" with hash `{h}`")).unwrap_or_default(),
        if known.is_empty() { String::from(" (workers and orchestrators register theirs when they start; `floxide graphs list` shows them)") } else { format!("; known versions: {}", known.join(", ")) }
    )]
    UnknownGraph {
        /// The workflow asked for.
        workflow: String,
        /// The hash asked for.
        hash: Option<String>,
        /// The hashes of the workflow's registered versions.
        known: Vec<String>,
    },
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The result could not be encoded as JSON.
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The deployment a command works on: its backend's traits (through `Deref`) and what each
/// backend offers operators beyond them.
pub enum Deployment {
    /// A Redis deployment (one key prefix).
    Redis(RedisBackend),
    /// A PostgreSQL deployment (one schema).
    Postgres(PostgresBackend),
}

impl std::ops::Deref for Deployment {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        match self {
            Deployment::Redis(b) => b,
            Deployment::Postgres(b) => b,
        }
    }
}

impl Deployment {
    /// The backend as a shared trait object (clones share its connections).
    pub fn shared(&self) -> std::sync::Arc<dyn Backend> {
        match self {
            Deployment::Redis(b) => std::sync::Arc::new(b.clone()),
            Deployment::Postgres(b) => std::sync::Arc::new(b.clone()),
        }
    }

    /// Queue counters per workflow.
    pub async fn stats(&self) -> Result<Stats, DistributedError> {
        match self {
            Deployment::Redis(b) => b.stats().await,
            Deployment::Postgres(b) => b.stats().await,
        }
    }

    /// How far a run is.
    pub async fn progress(&self, run_id: &str) -> Result<RunProgress, DistributedError> {
        match self {
            Deployment::Redis(b) => b.progress(run_id).await,
            Deployment::Postgres(b) => b.progress(run_id).await,
        }
    }

    /// When the leases of a run's in-flight items expire.
    pub async fn lease_deadlines(
        &self,
        run_id: &str,
    ) -> Result<BTreeMap<ItemId, SystemTime>, DistributedError> {
        match self {
            Deployment::Redis(b) => b.lease_deadlines(run_id).await,
            Deployment::Postgres(b) => b.lease_deadlines(run_id).await,
        }
    }
}

/// What every command works with.
pub struct Session {
    pub backend: Deployment,
    json: bool,
    out: std::io::Stdout,
}

impl Session {
    /// Whether the output is JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Writes `text` as it is (an SVG document), whatever the output format.
    pub fn write_raw(&mut self, text: &str) -> Result<(), CliError> {
        let mut out = self.out.lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    /// Prints `value` as JSON, or the text `table` makes of it.
    pub fn print<T: Serialize>(
        &mut self,
        value: &T,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        let mut out = self.out.lock();
        if self.json {
            serde_json::to_writer_pretty(&mut out, value)?;
            writeln!(out)?;
        } else {
            out.write_all(table(value).as_bytes())?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Stored bytes (already text) as JSON when they are JSON, else as a JSON string.
pub fn stored(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// Connects to the deployment `url` names, by its scheme.
async fn connect(cli: &Cli, url: String) -> Result<Deployment, CliError> {
    let scheme = url
        .split("://")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match scheme.as_str() {
        "redis" | "rediss" | "redis+unix" | "unix" | "redis+cluster" | "rediss+cluster" => {
            let mut config = RedisConfig::new(url).with_key_prefix(&cli.connection.prefix);
            config = match cli.connection.partitions {
                Some(n) => config.with_partitions(n),
                None => config.with_recorded_partitions(),
            };
            if let Some(password) = &cli.connection.password {
                config = config.with_password(password);
            }
            Ok(Deployment::Redis(RedisBackend::new(
                RedisClient::new(config).await?,
            )))
        }
        "postgres" | "postgresql" => {
            // An operator's tool creates no tables: a wrong schema name is an error.
            let config = PostgresConfig::new(url)
                .with_schema(&cli.connection.schema)
                .with_pool_size(4)
                .with_migration_on_connect(false);
            Ok(Deployment::Postgres(
                PostgresBackend::connect_with(config).await?,
            ))
        }
        _ => Err(CliError::UnknownScheme(scheme)),
    }
}

/// Connects to `url` and runs the command.
pub async fn execute(cli: Cli, url: String) -> Result<(), CliError> {
    let mut session = Session {
        backend: connect(&cli, url).await?,
        json: cli.json,
        out: std::io::stdout(),
    };
    let s = &mut session;
    match cli.command {
        Command::Runs(RunsCommand::List {
            status,
            workflow,
            limit,
        }) => runs::list(s, status, workflow, limit).await,
        Command::Runs(RunsCommand::Show { run, svg: true, .. }) => graphs::draw_run(s, &run).await,
        Command::Runs(RunsCommand::Show { run, all_items, .. }) => {
            runs::show(s, &run, all_items).await
        }
        Command::Runs(RunsCommand::Cancel { run }) => {
            runs::control(s, &run, RunAction::Cancel).await
        }
        Command::Runs(RunsCommand::Pause { run }) => runs::control(s, &run, RunAction::Pause).await,
        Command::Runs(RunsCommand::Resume { run }) => {
            runs::control(s, &run, RunAction::Resume).await
        }
        Command::Runs(RunsCommand::Wait {
            run,
            timeout,
            poll,
            quiet,
        }) => runs::wait(s, &run, timeout, poll, quiet).await,
        Command::Workers(args) => workers::list(s, args.interval).await,
        Command::Dlq(DlqCommand::List) => dlq::list(s).await,
        Command::Dlq(DlqCommand::Requeue { ids, all }) => dlq::requeue(s, ids, all).await,
        Command::Dlq(DlqCommand::Drop { ids }) => dlq::drop(s, ids).await,
        Command::Stats(args) => stats::show(s, args.interval).await,
        Command::Ui(args) => {
            let backend = s.backend.shared();
            let options = crate::ui::UiOptions {
                listen: args.listen,
                token: args.token,
                read_only: args.read_only,
            };
            crate::ui::serve(backend, options).await
        }
        Command::Graphs(GraphsCommand::List) => graphs::list(s).await,
        Command::Graphs(GraphsCommand::Show {
            workflow,
            hash,
            svg,
        }) => graphs::show(s, &workflow, hash.as_deref(), svg).await,
    }
}
