//! The command line: global connection options and one subcommand per operation.

use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use floxide_core::distributed::{RunId, RunStatus};
use floxide_core::ItemId;

/// Operate Floxide's distributed runs on a Redis or PostgreSQL backend.
///
/// Inspects and controls runs, waits for them, lists workers and dead letters, and reports
/// queue statistics. It needs no knowledge of the workflows: work items, contexts and
/// outputs are shown as they are stored (JSON text, or a summary of bytes).
#[derive(Debug, Parser)]
#[command(
    name = "floxide",
    version,
    after_help = "Output is a table for people; --json prints JSON for scripts.\n\
                  Exit status: 0 on success, 1 on a runtime error (unknown run, Redis \
                  unreachable, a waited-for run that did not complete), 2 on a usage error."
)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten, next_help_heading = "Connection")]
    pub connection: Connection,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the deployment is.
#[derive(Debug, Args)]
pub struct Connection {
    /// The backend, by its URL's scheme: redis://… or rediss://… (Redis, as --redis),
    /// redis+cluster://host:port,host:port/ or rediss+cluster://… (a Redis Cluster, by seed
    /// nodes), postgres://user:password@host:port/database or postgresql://… (PostgreSQL).
    #[arg(
        long = "backend",
        value_name = "URL",
        env = "FLOXIDE_BACKEND_URL",
        hide_env_values = true,
        global = true
    )]
    pub backend: Option<String>,

    /// The PostgreSQL schema of the deployment (as given to `PostgresConfig::with_schema`).
    #[arg(
        long,
        value_name = "SCHEMA",
        env = "FLOXIDE_PG_SCHEMA",
        default_value = "floxide",
        global = true
    )]
    pub schema: String,

    /// The Redis server: redis://host:port/db, or redis://user:password@host:port/db, or
    /// rediss://… for TLS.
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "FLOXIDE_REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    pub url: Option<String>,

    /// The key prefix of the deployment (as given to `RedisConfig::with_key_prefix`).
    #[arg(
        long,
        value_name = "PREFIX",
        env = "FLOXIDE_REDIS_PREFIX",
        default_value = "floxide:",
        global = true
    )]
    pub prefix: String,

    /// The number of partitions of the deployment (as given to `RedisConfig::with_partitions`);
    /// by default the one the deployment recorded.
    #[arg(
        long,
        value_name = "N",
        env = "FLOXIDE_REDIS_PARTITIONS",
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub partitions: Option<u32>,

    /// The Redis password (overrides the one in the URL; prefer the variable to the flag,
    /// which other users of the machine can see).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FLOXIDE_REDIS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, inspect, control and wait for runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List workers: their host, process, last heartbeat, current item and liveness.
    Workers(WorkersArgs),
    /// List, re-enqueue or drop dead-lettered items.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queue depth, delayed retries, items in flight, dead letters and throughput per workflow.
    Stats(StatsArgs),
    /// The workflow graphs that workers and orchestrators registered: list them, show one, or
    /// draw it as SVG.
    #[command(subcommand)]
    Graphs(GraphsCommand),
    /// Serve the dashboard: runs, each run drawn as its graph (live), run control.
    Ui(UiArgs),
}

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Where to listen. Anything but a loopback address needs --token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// The token clients must present (`?token=…` once, or `Authorization: Bearer …`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FLOXIDE_UI_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Hide and refuse every action (cancel, pause, resume).
    #[arg(long)]
    pub read_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum GraphsCommand {
    /// List every registered version: workflow, hash, size, when first and last registered.
    List,
    /// Show a workflow's graph (its most recently registered version, or `--hash`): nodes with
    /// their types, edges with their kinds; `--svg` draws it instead.
    Show {
        /// The workflow's name.
        workflow: String,
        /// The version's hash (a prefix is enough).
        #[arg(long, value_name = "HASH")]
        hash: Option<String>,
        /// Print the graph as an SVG document (`> graph.svg`).
        #[arg(long)]
        svg: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs with this status.
        #[arg(long, value_name = "STATUS", value_parser = status_parser())]
        status: Option<RunStatus>,
        /// Only runs of this workflow.
        #[arg(long, value_name = "NAME")]
        workflow: Option<String>,
        /// Show at most this many runs (0: all).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
    /// Show a run: status, timings, output or error, context, metrics, its pending and
    /// in-flight items (with their worker and lease deadline) and its errors.
    Show {
        /// The run's id.
        run: RunId,
        /// Show every item, completed ones included.
        #[arg(long)]
        all_items: bool,
        /// Draw the run as its workflow's graph instead (SVG): each node coloured by what its
        /// items are doing, with their counts.
        #[arg(long, conflicts_with = "all_items")]
        svg: bool,
    },
    /// Cancel a run: no step starts, in-flight steps are signalled and their commits rejected.
    Cancel {
        /// The run's id.
        run: RunId,
    },
    /// Pause a run: its items are held until it is resumed.
    Pause {
        /// The run's id.
        run: RunId,
    },
    /// Resume a paused run, or re-enqueue what failed in a failed run.
    Resume {
        /// The run's id.
        run: RunId,
    },
    /// Wait until a run finishes, showing completed against outstanding items.
    ///
    /// Exits with 0 when the run completed, and with 1 when it failed, was cancelled or did
    /// not finish within --timeout.
    Wait {
        /// The run's id.
        run: RunId,
        /// Give up after this many seconds (default: wait as long as it takes).
        #[arg(long, value_name = "SECONDS", value_parser = seconds)]
        timeout: Option<Duration>,
        /// Re-read the progress this often, in seconds (status changes are seen at once).
        #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "0.5")]
        poll: Duration,
        /// Show no progress.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// How often workers report, in seconds. A worker is alive when it reported within two
    /// intervals, stale within six, dead after that (workers report about once a second).
    #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "2")]
    pub interval: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first, with their ids (`<run id>:<item id>`).
    List,
    /// Put dead-lettered items back in the queue; a failed run is revived.
    Requeue {
        /// Dead letter ids, as printed by `dlq list`.
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all",
            value_parser = dead_letter_id
        )]
        ids: Vec<DeadLetterId>,
        /// Re-enqueue every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good (their runs stay failed).
    Drop {
        /// Dead letter ids, as printed by `dlq list`.
        #[arg(value_name = "ID", required = true, value_parser = dead_letter_id)]
        ids: Vec<DeadLetterId>,
    },
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Measure throughput over this many seconds: completed steps are counted twice, this
    /// far apart (0: do not measure).
    #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "1")]
    pub interval: Duration,
}

/// A dead letter's id: `<run id>:<item id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterId {
    pub run_id: RunId,
    pub item_id: ItemId,
}

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.run_id, self.item_id)
    }
}

/// `<run id>:<item id>`; the run id may contain `:`, the item id (hex digits) may not.
fn dead_letter_id(text: &str) -> Result<DeadLetterId, String> {
    let (run, item) = text
        .rsplit_once(':')
        .filter(|(run, _)| !run.is_empty())
        .ok_or_else(|| format!("expected `<run id>:<item id>`, got `{text}`"))?;
    Ok(DeadLetterId {
        run_id: run.to_owned(),
        item_id: item.parse().map_err(|e| format!("{e}"))?,
    })
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("expected a number of seconds, got `{text}`"))
}

fn status_parser() -> impl TypedValueParser<Value = RunStatus> {
    PossibleValuesParser::new(RunStatus::ALL.map(RunStatus::as_str))
        .try_map(|s| s.parse::<RunStatus>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dead_letter_ids_split_at_the_last_colon() {
        let id = dead_letter_id("orders:42:00ff").unwrap();
        assert_eq!(id.run_id, "orders:42");
        assert_eq!(id.item_id, "ff".parse().unwrap());
        assert_eq!(id.to_string(), format!("orders:42:{:032x}", 0xff));
        assert!(dead_letter_id("no-item").is_err());
        assert!(dead_letter_id(":00ff").is_err());
        assert!(dead_letter_id("run:xyz").is_err());
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_negatives() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(seconds("-1").is_err());
        assert!(seconds("soon").is_err());
    }
}
