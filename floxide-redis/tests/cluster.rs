//! The Redis backend on a real Redis Cluster (six `redis-server`s started by the tests: three
//! masters, three replicas): the conformance suite (G1–G7), and what a cluster adds (G8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use floxide_redis::testing::RedisCluster;
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(RedisCluster::start_or_panic)
}

/// A backend on the shared test cluster, under a key prefix of its own.
async fn backend() -> RedisBackend {
    let prefix = format!("cl{}:", NEXT.fetch_add(1, Ordering::SeqCst));
    let client = RedisClient::new(RedisConfig::cluster(cluster().urls()).with_key_prefix(prefix))
        .await
        .expect("connect to the test cluster");
    RedisBackend::new(client)
}

floxide::conformance_tests!(#[tokio::test(flavor = "multi_thread", worker_threads = 4)], backend());
