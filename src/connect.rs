//! [`connect_backend`]: the backend a URL names, picked by its scheme.

use std::sync::Arc;

use floxide_core::distributed::{Backend, DistributedError};
use floxide_core::FloxideError;

/// Connects to the backend `url` names, by its scheme: `redis://` or `rediss://` (feature
/// `redis`: a `floxide_redis::RedisBackend` with the default configuration), a Redis Cluster
/// as `redis+cluster://host:port,host:port/` (or `rediss+cluster://`)
/// and `postgres://` or `postgresql://` (feature `postgres`: a
/// `floxide_postgres::PostgresBackend`, schema `floxide`). The worker
/// runner's `--backend URL` is meant for it:
///
/// ```no_run
/// # use floxide::*;
/// # #[derive(Clone, Debug)] struct Flow;
/// # async fn demo() -> Result<(), FloxideError> {
/// let args = WorkerArgs::from_env().map_err(FloxideError::Generic)?;
/// let backend = floxide::connect_backend(args.backend_url()?).await?;
/// # let _ = backend; Ok(()) }
/// ```
///
/// The result is shared (`Arc<dyn Backend>` is a backend): pass it to `.worker(..)` or
/// `.orchestrator(..)` of any workflow. Use the backend crates' own configurations for
/// anything else (key prefix, schema, pool size, TLS settings).
///
/// # Errors
/// [`DistributedError::UnknownBackendScheme`] for a scheme this build does not know, and the
/// backend's own connection errors.
pub async fn connect_backend(url: &str) -> Result<Arc<dyn Backend>, FloxideError> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .unwrap_or_default();
    match scheme.as_str() {
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            Ok(Arc::new(floxide_redis::RedisBackend::connect(url).await?))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(
            floxide_postgres::PostgresBackend::connect(url).await?,
        )),
        _ => Err(DistributedError::UnknownBackendScheme {
            scheme,
            known: known_schemes().to_owned(),
        }
        .into()),
    }
}

/// The schemes this build knows.
fn known_schemes() -> &'static str {
    match (cfg!(feature = "redis"), cfg!(feature = "postgres")) {
        (true, true) => {
            "redis://, rediss://, redis+cluster://, rediss+cluster://, postgres://, postgresql://"
        }
        (true, false) => "redis://, rediss://, redis+cluster://, rediss+cluster://",
        (false, true) => "postgres://, postgresql://",
        (false, false) => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_scheme_is_a_typed_error() {
        let err = connect_backend("mysql://db/app")
            .await
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("no backend for URL scheme `mysql`"), "{err}");
        assert!(err.contains(known_schemes()), "{err}");
    }
}
