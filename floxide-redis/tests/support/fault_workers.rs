//! The fault worker processes of the Redis fault tests (`faults.rs`, `cluster_faults.rs`,
//! which include this file with `#[path]`): `examples/fault_worker.rs`, built once per test
//! binary, started with a short lease so that crashed workers' items come back quickly.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::processes::{built_once, FaultWorker, Workers};

/// The workers' lease (heartbeats every quarter of it).
pub const LEASE_MS: u64 = 1000;

/// How the worker processes of a test are configured.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Steps each process runs at once.
    pub concurrency: usize,
    /// How long each step sleeps.
    pub step_ms: u64,
}

/// `target/<profile>/examples/fault_worker`, built (once per test binary) when it is missing or
/// older than its source. (`cargo test -p floxide-redis` builds it anyway, like every example;
/// after changing only the library, run that rather than one test file alone.)
fn worker_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(
        &BIN,
        "floxide-redis",
        env!("CARGO_MANIFEST_DIR"),
        "fault_worker",
    )
}

/// Worker processes `<name><n>` on the backend at `url` (a server, or a `redis+cluster://`
/// cluster), under `prefix`.
pub fn fault_workers(name: &'static str, url: &str, prefix: &str, settings: Settings) -> Workers {
    let worker = FaultWorker {
        url: url.to_owned(),
        concurrency: settings.concurrency,
        lease_ms: LEASE_MS,
        step_ms: settings.step_ms,
    };
    let prefix = prefix.to_owned();
    Workers::new(name, move |n| {
        let mut cmd = worker.command(worker_binary(), name, n);
        cmd.env("FAULT_PREFIX", &prefix);
        cmd
    })
}
