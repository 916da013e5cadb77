//! Redis distributed: an orchestrator and N worker **processes** sharing one Redis.
//!
//! ```text
//! cargo run -p floxide-redis --example redis_distributed -- --redis redis://127.0.0.1:6379/ --workers 3 --runs 20
//! ```
//! The program starts `--workers` copies of itself as worker processes (each runs
//! `run_worker_main`, so `--concurrency`, SIGTERM and exit codes work as for any worker
//! binary), starts `--runs` runs of a small order-processing workflow, prints progress while
//! they complete, prints the results, and stops the workers with SIGTERM. Point `--redis` at
//! any Redis (`redis://[user:password@]host:port/db`); keys go under `--prefix` (default
//! `example:`), which is cleared first. The workflow and the demo are in
//! `examples/shared/orders.rs` (the PostgreSQL example runs the same).

#[path = "../../examples/shared/orders.rs"]
mod orders;

use floxide::*;
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

async fn connect(url: String, prefix: String) -> Result<RedisBackend, FloxideError> {
    let client = RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix)).await?;
    Ok(RedisBackend::new(client))
}

/// Connects under `prefix`, cleared, and runs the demo.
async fn demo(
    url: &str,
    prefix: &str,
    workers: usize,
    runs: u32,
    harness: &[&str],
) -> Result<Vec<String>, FloxideError> {
    let backend = connect(url.to_owned(), prefix.to_owned()).await?;
    backend
        .client()
        .clear()
        .await
        .map_err(|e| FloxideError::Generic(e.to_string()))?;
    orders::demo(backend, url, prefix, workers, runs, harness).await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if orders::is_worker() {
        return orders::worker_main(connect).await;
    }
    let url = orders::flag("--redis", "redis://127.0.0.1:6379/");
    let prefix = orders::flag("--prefix", "example:");
    let workers = orders::flag("--workers", "3").parse().unwrap_or(3);
    let runs = orders::flag("--runs", "20").parse().unwrap_or(20);
    orders::report(demo(&url, &prefix, workers, runs, &[]).await)
}

#[cfg(test)]
mod tests {
    use floxide_redis::testing::{RedisServer, ServerOptions};

    use super::orders;

    #[test]
    fn worker_entry() {
        orders::worker_entry(orders::worker_main(super::connect));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_complete_on_worker_processes() {
        let server = RedisServer::start_or_panic(ServerOptions::default());
        let invoices = super::demo(&server.url(), "ex:", 2, 10, &orders::HARNESS)
            .await
            .unwrap();
        orders::check_invoices(&invoices);
    }
}
