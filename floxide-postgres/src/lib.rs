//! PostgreSQL backend for Floxide's distributed runtime: **in progress**.
//!
//! What exists: [`PostgresBackend::connect`] with a [`PostgresConfig`] (pool size, schema,
//! statement and connect timeouts), a connection pool, the schema and its versioned
//! migrations ([`migrate`], applied on connect, idempotent, safe when several processes start
//! at once), and [`testing::PostgresServer`], a private PostgreSQL server for tests. The
//! worker and operator traits of `floxide_core::distributed` come next; until then use the
//! in-memory or Redis backend to run workflows.
//!
//! ```no_run
//! # async fn demo() -> Result<(), floxide_postgres::PostgresBackendError> {
//! use floxide_postgres::{PostgresBackend, PostgresConfig};
//! let backend = PostgresBackend::connect_with(
//!     PostgresConfig::new("postgres://app@db.internal/app").with_schema("flows"),
//! )
//! .await?;
//! assert_eq!(backend.schema_version().await?, floxide_postgres::SCHEMA_VERSION);
//! # Ok(()) }
//! ```

mod backend;
mod config;
mod error;
pub mod migrate;
// The worker's path in SQL, tested on its own; the backend traits built on it come next.
#[allow(dead_code)]
mod ops;
pub mod testing;

pub use backend::PostgresBackend;
pub use config::PostgresConfig;
pub use error::PostgresBackendError;
pub use migrate::SCHEMA_VERSION;
