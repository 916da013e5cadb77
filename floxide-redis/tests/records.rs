//! Runs' records as their readers see them, against a private `redis-server`: a new run's
//! record leaves out its counters at their starting values (outstanding 1, context version
//! 0, one item made), and the operator's statistics read a run index of any size.

use std::time::Duration;

use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

#[path = "support/chain.rs"]
mod chain;
use chain::chain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_before_its_first_commit_reads_with_its_starting_counters() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix("fresh:");
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();

    // The record holds none of the three counters yet.
    let mut conn = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<Option<String>> = ::redis::cmd("HMGET")
        .arg(format!("fresh:{{p0}}:r:{run}"))
        .arg(&["left", "ver", "m_items", "st"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, vec![None, None, None, Some("pending".to_owned())]);

    // Every reader sees them at their starting values.
    let progress = backend.progress(&run).await.unwrap();
    assert_eq!(
        (progress.total, progress.outstanding),
        (1, 1),
        "{progress:?}"
    );
    let metrics = o.metrics(&run).await.unwrap();
    assert_eq!(metrics.total_work_items, 1, "{metrics:?}");
    assert_eq!(metrics.completed, 0, "{metrics:?}");
    assert_eq!(backend.load_context(&run).await.unwrap().version, 0);

    // A pause and a resume before any step: the run still has its item to run (read as no
    // outstanding item, the resume would finish it at once).
    o.pause(&run).await.unwrap();
    assert_eq!(o.status(&run).await.unwrap(), RunStatus::Paused);
    o.resume(&run).await.unwrap();
    assert_eq!(o.status(&run).await.unwrap(), RunStatus::Running);

    let worker = chain().worker(backend.clone()).build().unwrap();
    let output = async {
        loop {
            if let Some((_, out)) = worker.run_once("w").await.unwrap() {
                break out;
            }
        }
    };
    let output = tokio::time::timeout(Duration::from_secs(10), output)
        .await
        .expect("the resumed run completes");
    assert_eq!(output, 3);
    let metrics = o.metrics(&run).await.unwrap();
    assert_eq!(
        (metrics.total_work_items, metrics.completed),
        (2, 2),
        "{metrics:?}"
    );
    let progress = backend.progress(&run).await.unwrap();
    assert_eq!(
        (progress.total, progress.outstanding),
        (2, 0),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_a_run_index_longer_than_one_read() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix("stats:");
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    // More runs (and so ready items) than one read of the index takes (500).
    let started = o.start_runs(&WorkflowCtx::new(()), 0..1_201).await;
    assert!(started.iter().all(Result::is_ok));
    // Two of them leased, the last one for 1 ms, so that it expires (a take may hand back
    // expired leases: none follows it): the timers are read page by page too.
    let w = WorkerId::from("w");
    for lease in [Duration::from_secs(60), Duration::from_millis(1)] {
        let options = TakeOptions {
            lease_timeout: lease,
            ..TakeOptions::default()
        };
        backend
            .take("Chain", &w, options, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("a ready item");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    let total = backend.stats().await.unwrap().total();
    assert_eq!((total.runs, total.active_runs), (1_201, 1_201), "{total:?}");
    assert_eq!(total.ready, 1_199, "{total:?}");
    assert_eq!((total.in_flight, total.expired_leases), (1, 1), "{total:?}");
}
