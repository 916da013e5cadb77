//! The conformance suite (G1–G7) on the Redis backend, against a private `redis-server`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

static SERVER: OnceLock<RedisServer> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A backend on the shared test server, under a key prefix of its own.
async fn backend() -> RedisBackend {
    let server = SERVER.get_or_init(|| RedisServer::start_or_panic(ServerOptions::default()));
    let prefix = format!("conf{}:", NEXT.fetch_add(1, Ordering::SeqCst));
    let client = RedisClient::new(RedisConfig::new(server.url()).with_key_prefix(prefix))
        .await
        .expect("connect to the test redis-server");
    RedisBackend::new(client)
}

floxide::conformance_tests!(#[tokio::test(flavor = "multi_thread", worker_threads = 4)], backend());

/// The same checks with runs spread over four partitions (one blocking wait over all of
/// them; takes fused into commits within the committing run's partition).
mod partitioned {
    use super::*;

    async fn backend() -> RedisBackend {
        let server = SERVER.get_or_init(|| RedisServer::start_or_panic(ServerOptions::default()));
        let prefix = format!("part{}:", NEXT.fetch_add(1, Ordering::SeqCst));
        let client = RedisClient::new(
            RedisConfig::new(server.url())
                .with_key_prefix(prefix)
                .with_partitions(4),
        )
        .await
        .expect("connect to the test redis-server");
        RedisBackend::new(client)
    }

    floxide::conformance_tests!(#[tokio::test(flavor = "multi_thread", worker_threads = 4)], backend());
}
