//! The Redis backend on a real Redis Cluster (six `redis-server`s started by the tests: three
//! masters, three replicas): the conformance suite (G1–G7), and what a cluster adds (G8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use floxide_redis::testing::{RedisCluster, ServerOptions, TlsFiles};
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

/// G8: the partition count is recorded in the cluster; a client configured with another count
/// is refused with an error naming both.
#[tokio::test]
async fn another_partition_count_is_refused() {
    let prefix = format!("count{}:", NEXT.fetch_add(1, Ordering::SeqCst));
    let first = RedisClient::new(RedisConfig::cluster(cluster().urls()).with_key_prefix(&prefix))
        .await
        .expect("connect");
    assert_eq!(
        first.config().partitions(),
        floxide_redis::CLUSTER_PARTITIONS
    );
    let err = RedisClient::new(
        RedisConfig::cluster(cluster().urls())
            .with_key_prefix(&prefix)
            .with_partitions(16),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("uses 48 partition(s)") && err.contains("configured with 16"),
        "{err}"
    );
    // A tool that adopts the recorded count gets the same layout.
    let tool = RedisClient::new(
        RedisConfig::new(cluster().url())
            .with_key_prefix(&prefix)
            .with_recorded_partitions(),
    )
    .await
    .expect("connect with the recorded count");
    assert_eq!(tool.partition_slots(), first.partition_slots());
}

/// G8: the default partitions fall evenly over the masters (three masters of equal slot
/// ranges: sixteen partitions each).
#[tokio::test]
async fn partitions_spread_evenly_over_the_masters() {
    let client = backend().await.client().clone();
    let slots = client.partition_slots();
    let masters = tokio::task::spawn_blocking(move || {
        let mut per_master = std::collections::BTreeMap::<u16, usize>::new();
        for slot in slots {
            let master = cluster().master_of(slot).expect("a master serves the slot");
            *per_master.entry(master).or_default() += 1;
        }
        per_master
    })
    .await
    .expect("read the cluster's slots");
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.values().all(|&n| n == 16), "{masters:?}");
}

/// A cluster whose nodes require a password: the password from the configuration (or the
/// URL) reaches every node, the subscriptions included; a wrong one is a clear error. An ACL
/// user limited to the deployment's keys and channels runs workflows too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_runs_workflows() {
    let secured = tokio::task::spawn_blocking(|| {
        RedisCluster::start_with(ServerOptions {
            password: Some("cluster-pw".to_owned()),
            ..ServerOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .expect("start the cluster");
    let wrong = RedisClient::new(RedisConfig::cluster(secured.urls()).with_password("nope"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(wrong.contains("cannot connect"), "{wrong}");
    let url = secured
        .url()
        .replace("redis+cluster://", "redis+cluster://:cluster-pw@");
    let backend = RedisBackend::new(
        RedisClient::new(RedisConfig::new(url).with_key_prefix("pw:"))
            .await
            .expect("connect with the password in the URL"),
    );
    floxide::conformance::g3_parallel_branches_keep_every_change(backend).await;

    // An ACL user allowed the `acl:` keys and channels, scripts and functions only.
    let secured = tokio::task::spawn_blocking(move || {
        secured
            .on_every_node(&[
                "ACL", "SETUSER", "flow", "on", ">flow-pw", "~acl:*", "&acl:*", "+@all",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        secured
    })
    .await
    .expect("create the ACL user");
    let outside = RedisClient::new(
        RedisConfig::cluster(secured.urls())
            .with_username("flow")
            .with_password("flow-pw")
            .with_key_prefix("other:"),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        outside.contains("NOPERM") || outside.contains("permission"),
        "{outside}"
    );
    let backend = RedisBackend::new(
        RedisClient::new(
            RedisConfig::cluster(secured.urls())
                .with_username("flow")
                .with_password("flow-pw")
                .with_key_prefix("acl:"),
        )
        .await
        .expect("connect as the ACL user"),
    );
    floxide::conformance::g3_parallel_branches_keep_every_change(backend).await;
}

/// `rediss+cluster://`: a cluster that serves TLS only (clients, replication, cluster bus),
/// with a private certificate authority; without it the connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_runs_workflows() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
    let dir = std::env::temp_dir().join(format!("floxide-cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the certificate");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let ca = certified.cert.pem();
    std::fs::write(&cert, &ca).expect("write the certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
    let secured = tokio::task::spawn_blocking(move || {
        RedisCluster::start_with(ServerOptions {
            tls: Some(TlsFiles { cert, key }),
            ..ServerOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .expect("start the cluster");
    let url = secured.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let untrusted = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        RedisClient::new(
            RedisConfig::new(&url).with_connect_timeout(std::time::Duration::from_secs(2)),
        ),
    )
    .await
    .expect("an answer")
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(untrusted.contains("cannot connect"), "{untrusted}");
    let backend = RedisBackend::new(
        RedisClient::new(
            RedisConfig::new(url)
                .with_key_prefix("tls:")
                .with_tls_root_certificate(ca.into_bytes()),
        )
        .await
        .expect("connect over TLS with the private CA"),
    );
    floxide::conformance::g3_parallel_branches_keep_every_change(backend).await;
    drop(secured);
    let _ = std::fs::remove_dir_all(&dir);
}
