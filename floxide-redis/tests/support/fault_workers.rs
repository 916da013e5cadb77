//! The fault worker processes of the Redis fault tests (`faults.rs`, `cluster_faults.rs`,
//! which include this file with `#[path]`): `examples/fault_worker.rs`, built once per test
//! binary, started with a short lease so that crashed workers' items come back quickly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::processes::{locate_or_build, Workers};

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
    let built = BIN.get_or_init(|| {
        locate_or_build("floxide-redis", env!("CARGO_MANIFEST_DIR"), "fault_worker")
    });
    match built {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// Worker processes `<name><n>` on the backend at `url` (a server, or a `redis+cluster://`
/// cluster), under `prefix`.
pub fn fault_workers(name: &'static str, url: &str, prefix: &str, settings: Settings) -> Workers {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    Workers::new(name, move |n| {
        let mut cmd = Command::new(worker_binary());
        cmd.args(["--backend", &url])
            .args(["--concurrency", &settings.concurrency.to_string()])
            .args(["--worker-name", &format!("{name}{n}")])
            .env_remove("FLOXIDE_BACKEND_URL")
            .env_remove("FLOXIDE_REDIS_URL")
            .env_remove("FLOXIDE_CONCURRENCY")
            .env_remove("FLOXIDE_WORKER_NAME")
            .env_remove("FLOXIDE_GRACE_SECS")
            .env("FAULT_PREFIX", &prefix)
            .env("FAULT_LEASE_MS", LEASE_MS.to_string())
            .env("FAULT_STEP_MS", settings.step_ms.to_string())
            .env("FAULT_WATCH_PARENT", "1");
        cmd
    })
}
