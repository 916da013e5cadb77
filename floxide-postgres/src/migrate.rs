//! The schema's versioned migrations, embedded in the binary.
//!
//! [`migrate`] applies the ones a schema lacks, in order, in one transaction that first takes
//! an advisory lock for the schema: processes starting together wait for each other, and
//! each migration is applied once. A schema at a newer version than this release knows is
//! refused ([`PostgresBackendError::SchemaTooNew`]), so an old worker never writes to a table
//! layout it does not understand.

use tokio_postgres::GenericClient;

use crate::error::describe;
use crate::PostgresBackendError;

/// The migrations: version, name, SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "graphs", include_str!("../migrations/0002_graphs.sql")),
    (
        3,
        "step history",
        include_str!("../migrations/0003_step_history.sql"),
    ),
    (
        4,
        "unchecked run keys",
        include_str!("../migrations/0004_unchecked_run_keys.sql"),
    ),
    (
        5,
        "leftover items",
        include_str!("../migrations/0005_leftover_items.sql"),
    ),
    (
        6,
        "lean runs",
        include_str!("../migrations/0006_lean_runs.sql"),
    ),
    (
        7,
        "finish list",
        include_str!("../migrations/0007_finish_list.sql"),
    ),
    (
        8,
        "first output in the record",
        include_str!("../migrations/0008_first_output_in_record.sql"),
    ),
    (
        9,
        "unwritten leases",
        include_str!("../migrations/0009_unwritten_leases.sql"),
    ),
    (
        10,
        "reopening",
        include_str!("../migrations/0010_reopening.sql"),
    ),
];

/// The schema version this release creates and expects.
pub const SCHEMA_VERSION: i32 = 10;

/// The first key of the advisory lock that serializes migrations (`'flx'`); the second is a
/// hash of the schema name.
const LOCK_KEY: i32 = 0x0066_6c78;

/// Brings `schema` (created when missing) to [`SCHEMA_VERSION`]; returns the versions applied
/// now (none when it was up to date).
///
/// # Errors
/// [`PostgresBackendError::SchemaTooNew`], or [`PostgresBackendError::Migration`] when a
/// statement fails (nothing is applied then).
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<Vec<i32>, PostgresBackendError> {
    let failed = |e: tokio_postgres::Error| PostgresBackendError::Migration {
        schema: schema.to_owned(),
        reason: describe(&e),
    };
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_KEY, &schema],
    )
    .await
    .map_err(failed)?;
    // The name is checked by the config (a plain identifier), so it can be written unquoted.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS floxide_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(failed)?;
    let current = current_version(&tx).await.map_err(failed)?;
    if current > SCHEMA_VERSION {
        return Err(PostgresBackendError::SchemaTooNew {
            schema: schema.to_owned(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO floxide_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(failed)?;
        tracing::info!(schema, version, name, "applied a Floxide schema migration");
        applied.push(*version);
    }
    tx.commit().await.map_err(failed)?;
    Ok(applied)
}

/// Checks, without changing anything, that `schema` is at [`SCHEMA_VERSION`].
///
/// # Errors
/// [`PostgresBackendError::SchemaNotReady`] when it is missing or older,
/// [`PostgresBackendError::SchemaTooNew`] when it is newer, or a query error.
pub async fn check(client: &impl GenericClient, schema: &str) -> Result<(), PostgresBackendError> {
    // The session's search_path is the schema (see `PostgresConfig`).
    let exists: bool = client
        .query_one("SELECT to_regclass('floxide_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let found = if exists {
        current_version(client).await?
    } else {
        0
    };
    match found {
        v if v == SCHEMA_VERSION => Ok(()),
        v if v > SCHEMA_VERSION => Err(PostgresBackendError::SchemaTooNew {
            schema: schema.to_owned(),
            found: v,
            known: SCHEMA_VERSION,
        }),
        v => Err(PostgresBackendError::SchemaNotReady {
            schema: schema.to_owned(),
            found: v,
            needed: SCHEMA_VERSION,
        }),
    }
}

/// The newest migration applied to the schema on the session's `search_path` (0 for none).
pub(crate) async fn current_version(
    client: &impl GenericClient,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM floxide_migrations",
            &[],
        )
        .await?;
    row.try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        for (i, (version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1, "{name}");
            assert!(!sql.trim().is_empty(), "{name}");
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
