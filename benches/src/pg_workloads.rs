//! The PostgreSQL workloads: the backend in a schema of its own (`--schema`, dropped before
//! the run), and the server's statistics as the meter.

use floxide_postgres::{PostgresBackend, PostgresConfig};
use tokio_postgres::NoTls;

use crate::workloads::{err, Meter, Target};
use crate::Args;

/// A direct connection for the meter and the schema's reset.
pub(crate) async fn direct(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(err)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Drops `schema` (a workload starts on an empty deployment).
pub(crate) async fn drop_schema(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<(), String> {
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .map_err(|e| format!("dropping schema {schema}: {e}"))
}

/// Transactions committed and rolled back in the database (pg_stat_database), CPU time of
/// the server's processes on this machine (/proc), and the size of the schema's tables.
struct Stats {
    client: tokio_postgres::Client,
    schema: String,
}

#[async_trait::async_trait]
impl Meter for Stats {
    fn name(&self) -> &'static str {
        "pg"
    }
    fn unit(&self) -> &'static str {
        "txns"
    }
    async fn operations(&self) -> Result<u64, String> {
        // The statistics are sent by each backend when it goes idle; ask for a fresh view.
        let row = self
            .client
            .query_one(
                "SELECT pg_stat_clear_snapshot(), (xact_commit + xact_rollback)::int8 \
                 FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(err)?;
        Ok(row.get::<_, i64>(1) as u64)
    }
    async fn cpu(&self) -> Result<f64, String> {
        Ok(postgres_cpu())
    }
    async fn bytes_per_run(&self, runs: usize) -> Result<f64, String> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&self.schema],
            )
            .await
            .map_err(err)?;
        Ok(row.get::<_, i64>(0) as f64 / runs.max(1) as f64)
    }
}

/// CPU seconds used so far by the processes named `postgres` on this machine (0 where /proc
/// cannot be read).
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| crate::workloads::stat_cpu(&stat, Some("postgres")))
        .sum()
}

/// The PostgreSQL target of the `dist-pg-*` workloads: `--pg URL` (default the local
/// server), `--schema NAME` (default `floxide_bench`).
pub(crate) async fn target(args: &Args) -> Result<Target<PostgresBackend>, String> {
    let url: String = args.get("pg", "postgres://postgres@127.0.0.1:5432/test".to_owned())?;
    let schema: String = args.get("schema", "floxide_bench".to_owned())?;
    let client = direct(&url).await?;
    drop_schema(&client, &schema).await?;
    let backend = PostgresBackend::connect_with(
        PostgresConfig::new(url)
            .with_schema(schema.clone())
            .with_pool_size(args.get("pool", 16)?)
            .with_step_history(crate::workloads::step_history(args)?),
    )
    .await
    .map_err(err)?;
    Ok(Target {
        family: "dist-pg",
        meter: Box::new(Stats { client, schema }),
        backend,
    })
}
