//! `floxide`: operate Floxide's distributed runs on a Redis or PostgreSQL backend.
//!
//! ```text
//! $ export FLOXIDE_REDIS_URL=redis://127.0.0.1:6379/
//! $ floxide runs list --status running
//! RUN       WORKFLOW  STATUS   STARTED                         DURATION  RESULT
//! order-17  Orders    running  2026-03-01 12:00:00 (4.2s ago)  4.2s      -
//! $ floxide runs show order-17          # timings, items with worker and lease deadline, errors
//! $ floxide runs wait order-17          # a progress bar; exit status 0 once it completed
//! $ floxide dlq list --json | jq -r '.[].id' | xargs -r floxide dlq requeue
//! $ floxide stats --interval 5          # queue depth, in flight, steps per second
//! $ floxide graphs show Orders --svg > orders.svg   # a workflow's registered graph, drawn
//! $ floxide ui --listen 127.0.0.1:8080   # the dashboard: runs, each drawn as its graph, live
//! ```
//!
//! Every command reads or changes the shared state in Redis the way workers and orchestrators
//! do (the same atomic scripts), so it is safe while they run. The tool knows nothing of the
//! workflows: items, contexts and outputs are shown as stored (JSON text, or a summary of
//! bytes).
//!
//! # Connection
//! `--backend URL` (or `FLOXIDE_BACKEND_URL`) picks the backend by the URL's scheme:
//! `postgres://…` for PostgreSQL, whose deployment is the schema `--schema`
//! (`FLOXIDE_PG_SCHEMA`, default `floxide`); `redis://…` or `rediss://…` for Redis.
//! For Redis, `--redis URL` (or `FLOXIDE_REDIS_URL`) and `--prefix` (`FLOXIDE_REDIS_PREFIX`, default
//! `floxide:`) name the deployment; its partition count is the one it recorded (or
//! `--partitions`, `FLOXIDE_REDIS_PARTITIONS`, which must match it); the password may come
//! from `FLOXIDE_REDIS_PASSWORD`.
//!
//! # Output
//! Tables by default; `--json` prints one JSON document (times in RFC 3339 UTC, durations in
//! milliseconds) for scripts. Exit status: 0 on success, 1 on a runtime error (the message
//! is on stderr), 2 on a usage error.

mod args;
mod commands;
mod dlq;
mod graphs;
mod layout;
mod render;
mod runs;
mod stats;
mod svg;
mod ui;
mod workers;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::Cli;
use crate::commands::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli
        .connection
        .backend
        .clone()
        .or(cli.connection.url.clone());
    let Some(url) = url else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no backend URL: pass --backend URL (redis://… or postgres://…) or set \
                 FLOXIDE_BACKEND_URL (for Redis, --redis URL or FLOXIDE_REDIS_URL work too)",
            )
            .exit();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::execute(cli, url)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`floxide runs list | head`): nothing left to say.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
