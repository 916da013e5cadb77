//! PostgreSQL backend for Floxide's distributed runtime (**in progress**, issue 14).
//!
//! [`PostgresBackend`] implements the worker's and the operator's traits
//! (`WorkerBackend`, `AdminBackend`) on tables in a schema of its own:
//! - a take leases ready items, expired leases and due retries with `FOR UPDATE SKIP LOCKED`;
//! - a batch commit is one transaction of two round trips: lock and read the batch's items and
//!   runs, judge each step in Rust (its lease token, its run's status, its context's
//!   version), then write every accepted step in one statement pipelined with the next take
//!   and `COMMIT`;
//! - idle takers and run waiters wake on `LISTEN/NOTIFY` (one listening connection per backend
//!   value, notifications sent once per transaction), not by polling;
//! - the run's status follows `floxide_core::distributed::machine`, computed in Rust.
//!
//! The shared conformance suite and fault tests with real worker processes pass on it; the
//! `floxide` tool (`--backend postgres://…`) and `floxide::connect_backend` (feature
//! `postgres`) reach it by URL. Finished runs and dead letters are deleted after their
//! retention ([`PostgresConfig::with_retention`], [`PostgresBackend::sweep`]). TLS: `sslmode=require` or
//! [`PostgresConfig::with_tls_root_certificate`], always verified.
//!
//! [`PostgresBackend::connect`] also brings the schema to [`SCHEMA_VERSION`] ([`migrate`]:
//! versioned, idempotent, safe when several processes start at once), and
//! [`testing::PostgresServer`] is a private PostgreSQL server for tests.
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

mod admin;
mod backend;
mod commit;
mod config;
mod error;
mod listen;
pub mod migrate;
mod ops;
mod overview;
mod pages;
mod pipeline;
mod retention;
mod start;
mod take;
pub mod testing;
mod tls;
mod worker;

pub use backend::PostgresBackend;
pub use config::PostgresConfig;
pub use error::PostgresBackendError;
pub use migrate::SCHEMA_VERSION;
pub use retention::Swept;
