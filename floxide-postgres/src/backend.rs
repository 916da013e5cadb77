//! The backend's handle: a connection pool on the deployment's schema.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::config::redacted;
use crate::error::describe;
use crate::{migrate, PostgresBackendError, PostgresConfig};

/// The PostgreSQL backend: a pool of connections whose sessions use the deployment's schema.
/// Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PostgresBackend {
    pub(crate) pool: Pool,
    config: PostgresConfig,
    pub(crate) signals: std::sync::Arc<crate::listen::Signals>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects to `url` with the default [`PostgresConfig`] and migrates the schema.
    ///
    /// # Errors
    /// See [`PostgresBackend::connect_with`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, PostgresBackendError> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects with `config`: one connection at once (so that a wrong address or refused
    /// credentials are reported right away), which brings the schema to
    /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) (or only checks it, see
    /// [`PostgresConfig::with_migration_on_connect`]); the pool opens the others when needed.
    ///
    /// # Errors
    /// [`PostgresBackendError::InvalidUrl`] or [`PostgresBackendError::InvalidConfig`] for bad
    /// settings, [`PostgresBackendError::Connect`] when the server cannot be reached or
    /// refuses the credentials, and the errors of [`migrate::migrate`].
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, PostgresBackendError> {
        let mut client_config = config.client_config()?;
        let tls = crate::tls::connector(&config, &mut client_config)?;
        let target = target_of(&config.url);
        let unreachable = |reason: String| PostgresBackendError::Connect {
            target: target.clone(),
            reason,
        };
        // The first connection, direct: its errors are the server's, not the pool's.
        let (mut client, connection) =
            tokio::time::timeout(config.connect_timeout, client_config.connect(tls.clone()))
                .await
                .map_err(|_| unreachable(format!("no answer within {:?}", config.connect_timeout)))?
                .map_err(|e| unreachable(describe(&e)))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "migration connection ended");
            }
        });
        let migrated = if config.migrate {
            migrate::migrate(&mut client, &config.schema)
                .await
                .map(|_| ())
        } else {
            migrate::check(&client, &config.schema).await
        };
        drop(client);
        let _ = driver.await;
        migrated?;
        let signals = crate::listen::Signals::new();
        crate::listen::spawn(client_config.clone(), tls.clone(), &config.schema, &signals);
        let manager = Manager::from_config(
            client_config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| PostgresBackendError::InvalidConfig(e.to_string()))?;
        let backend = PostgresBackend {
            pool,
            config,
            signals,
        };
        backend.spawn_sweeper(std::sync::Arc::downgrade(&backend.signals));
        Ok(backend)
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// A pooled connection.
    ///
    /// # Errors
    /// [`PostgresBackendError::Connect`] when no connection could be had in time.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, PostgresBackendError> {
        self.pool
            .get()
            .await
            .map_err(|e| PostgresBackendError::Connect {
                target: target_of(&self.config.url),
                reason: e.to_string(),
            })
    }

    /// A pooled connection, for the runtime's operations.
    pub(crate) async fn pooled(
        &self,
    ) -> Result<deadpool_postgres::Object, floxide_core::distributed::DistributedError> {
        self.client()
            .await
            .map_err(|e| floxide_core::distributed::DistributedError::Backend(e.to_string()))
    }

    /// The schema's version (the newest migration applied).
    ///
    /// # Errors
    /// A connection or query error.
    pub async fn schema_version(&self) -> Result<i32, PostgresBackendError> {
        let client = self.client().await?;
        Ok(migrate::current_version(&**client).await?)
    }
}

/// Where `url` points, for messages: without credentials.
fn target_of(url: &str) -> String {
    let shown = redacted(url);
    match (shown.find("://"), shown.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &shown[..scheme + 3], &shown[at + 1..])
        }
        _ => shown,
    }
}
