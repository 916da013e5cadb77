//! What the tests that drive runs of a workflow `Flow` by hand (backend calls, no workflow
//! code) share.

use std::time::Duration;

use floxide::distributed::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

/// A private `redis-server` and a backend on it, its keys under `prefix` (keep the server
/// while the backend is used).
pub async fn private_backend(prefix: &str) -> (RedisServer, RedisBackend) {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix(prefix);
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    (server, backend)
}

/// The outcome of a step whose commit completed its run.
pub fn completed() -> CommitOutcome {
    CommitOutcome::Committed {
        finished: Some(RunStatus::Completed),
    }
}

/// Take options: a long lease, five deliveries.
pub fn options() -> TakeOptions {
    TakeOptions {
        lease_timeout: Duration::from_secs(30),
        max_deliveries: 5,
    }
}

/// Takes a ready item of `Flow` for `worker`, asking for up to `max` and checking that one
/// came.
pub async fn take_one(backend: &RedisBackend, worker: &WorkerId, max: usize) -> Taken {
    let mut taken = backend
        .take_batch(
            TakeRequest::new("Flow", worker, options()).with_max(max),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    taken.remove(0)
}

/// Starts run `run` of `Flow`: context `null`, first item (`ItemId::ROOT`, bytes `0`) at
/// `node`.
pub async fn start(backend: &RedisBackend, run: &str, node: &str) {
    backend
        .start_run(StartRun::new(
            run,
            "Flow",
            b"null".to_vec(),
            NewItem::new(floxide::ItemId::ROOT, node, b"0".to_vec()),
        ))
        .await
        .unwrap();
}
