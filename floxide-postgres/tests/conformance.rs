//! The shared conformance suite (`floxide::conformance`) on PostgreSQL: one private server
//! per test process, a schema of its own per check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig};

static SERVER: OnceLock<PostgresServer> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn backend() -> PostgresBackend {
    let server = SERVER.get_or_init(PostgresServer::start_or_panic);
    let schema = format!("conf{}", NEXT.fetch_add(1, Ordering::SeqCst));
    // Some checks run 20 workers of 16 slots in this one process.
    let config = PostgresConfig::new(server.url())
        .with_schema(schema)
        .with_pool_size(64);
    PostgresBackend::connect_with(config).await.unwrap()
}

// Every check of the suite.
floxide::conformance_tests!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)], backend());

/// G3 over many rounds: a tree's chained steps once lost a context change about once in 40
/// rounds here (a commit carried a chained step before its parent), with 20 workers on one
/// server making commits slow enough for lease renewals to reorder them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_joins_keep_every_change_over_many_rounds() {
    let backend = backend().await;
    for _ in 0..60 {
        floxide::conformance::g3_joins_fire_exactly_once(backend.clone()).await;
    }
}
