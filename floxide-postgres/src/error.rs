//! The errors of the PostgreSQL backend.

/// Why connecting, migrating or a query failed. Messages never contain a password.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresBackendError {
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// A setting of [`PostgresConfig`](crate::PostgresConfig) is not usable.
    #[error("invalid PostgreSQL backend configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at `{target}`: {reason}")]
    Connect {
        /// Host and database (no credentials).
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// Applying the schema's migrations failed.
    #[error("migrating the Floxide schema `{schema}` failed: {reason}")]
    Migration {
        /// The schema.
        schema: String,
        /// What went wrong.
        reason: String,
    },
    /// The database holds a newer schema than this release knows.
    #[error(
        "the Floxide schema `{schema}` is at version {found}, newer than this release knows \
         ({known}); upgrade this process to the release that migrated it"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// The version found.
        found: i32,
        /// The newest version this release knows.
        known: i32,
    },
    /// Connecting without migrating (`PostgresConfig::with_migration_on_connect(false)`)
    /// found the schema missing or older than this release.
    #[error(
        "the Floxide schema `{schema}` is at version {found} (0: it does not exist) and this \
         release needs {needed}; check the schema name, or start a worker or orchestrator of \
         this release, which migrates it when it connects"
    )]
    SchemaNotReady {
        /// The schema.
        schema: String,
        /// The version found.
        found: i32,
        /// The version this release needs.
        needed: i32,
    },
    /// A query failed.
    #[error("PostgreSQL error: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for PostgresBackendError {
    fn from(e: tokio_postgres::Error) -> Self {
        PostgresBackendError::Query(describe(&e))
    }
}

/// A tokio-postgres error as one line: the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl From<PostgresBackendError> for floxide_core::FloxideError {
    fn from(error: PostgresBackendError) -> Self {
        floxide_core::distributed::DistributedError::Backend(error.to_string()).into()
    }
}
