//! Connecting, dispatching a command, and printing its result as a table or as JSON.

use std::io::Write;

use floxide_core::distributed::{DistributedError, RunAction};
use floxide_redis::{RedisBackend, RedisBackendError, RedisClient, RedisConfig};
use serde::Serialize;

use crate::args::{Cli, Command, DlqCommand, RunsCommand};
use crate::{dlq, runs, stats, workers};

/// Why a command failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Redis could not be reached.
    #[error(transparent)]
    Connect(#[from] RedisBackendError),
    /// The backend refused or failed the request (unknown run, invalid state, ...).
    #[error(transparent)]
    Backend(#[from] DistributedError),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The result could not be encoded as JSON.
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What every command works with.
pub struct Session {
    pub backend: RedisBackend,
    json: bool,
    out: std::io::Stdout,
}

impl Session {
    /// Whether the output is JSON.
    pub fn json(&self) -> bool {
        self.json
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

/// Connects to `url` and runs the command.
pub async fn execute(cli: Cli, url: String) -> Result<(), CliError> {
    let mut config = RedisConfig::new(url).with_key_prefix(cli.connection.prefix);
    config = match cli.connection.partitions {
        Some(n) => config.with_partitions(n),
        None => config.with_recorded_partitions(),
    };
    if let Some(password) = cli.connection.password {
        config = config.with_password(password);
    }
    let mut session = Session {
        backend: RedisBackend::new(RedisClient::new(config).await?),
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
        Command::Runs(RunsCommand::Show { run, all_items }) => runs::show(s, &run, all_items).await,
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
    }
}
