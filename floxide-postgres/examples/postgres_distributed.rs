//! PostgreSQL distributed: an orchestrator and N worker **processes** sharing one database.
//!
//! ```text
//! cargo run -p floxide-postgres --example postgres_distributed -- --pg postgres://postgres@127.0.0.1/test --workers 3 --runs 20
//! ```
//! The program starts `--workers` copies of itself as worker processes (each runs
//! `run_worker_main`, so `--concurrency`, SIGTERM and exit codes work as for any worker
//! binary), starts `--runs` runs of a small order-processing workflow, prints progress while
//! they complete, prints the results, and stops the workers with SIGTERM. Point `--pg` at any
//! PostgreSQL (`postgres://[user:password@]host:port/database`); the tables go in the schema
//! `--schema` (default `floxide_example`), which is dropped and created again first. The
//! workflow and the demo are in `examples/shared/orders.rs` (the Redis example runs the same).

#[path = "../../examples/shared/orders.rs"]
mod orders;

use floxide::*;
use floxide_postgres::{PostgresBackend, PostgresConfig};

async fn connect(url: String, schema: String) -> Result<PostgresBackend, FloxideError> {
    Ok(PostgresBackend::connect_with(PostgresConfig::new(url).with_schema(schema)).await?)
}

/// Drops the schema, connects (which creates it again) and runs the demo.
async fn demo(
    url: &str,
    schema: &str,
    workers: usize,
    runs: u32,
    harness: &[&str],
) -> Result<Vec<String>, FloxideError> {
    let fail = |e: tokio_postgres::Error| FloxideError::Generic(format!("PostgreSQL: {e}"));
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(fail)?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(fail)?;
    drop(client);
    let _ = driver.await;
    let backend = connect(url.to_owned(), schema.to_owned()).await?;
    orders::demo(backend, url, schema, workers, runs, harness).await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if orders::is_worker() {
        return orders::worker_main(connect).await;
    }
    let url = orders::flag("--pg", "postgres://postgres@127.0.0.1:5432/test");
    let schema = orders::flag("--schema", "floxide_example");
    let workers = orders::flag("--workers", "3").parse().unwrap_or(3);
    let runs = orders::flag("--runs", "20").parse().unwrap_or(20);
    orders::report(demo(&url, &schema, workers, runs, &[]).await)
}

#[cfg(test)]
mod tests {
    use floxide_postgres::testing::PostgresServer;

    use super::orders;

    #[test]
    fn worker_entry() {
        orders::worker_entry(orders::worker_main(super::connect));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_complete_on_worker_processes() {
        let server = PostgresServer::start_or_panic();
        let invoices = super::demo(&server.url(), "ex", 2, 10, &orders::HARNESS)
            .await
            .unwrap();
        orders::check_invoices(&invoices);
    }
}
