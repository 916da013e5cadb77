//! Runs' records as their readers see them, against a private `redis-server`: a new run's
//! record leaves out its counters at their starting values (outstanding 1, context version
//! 0, one item made), a batch of starts keeps each run's own workflow, context, input, key and
//! deadline, and the operator's statistics read a run index of any size.

use std::time::Duration;

use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

#[path = "support/chain.rs"]
mod chain;
use chain::chain;

/// A private server, and a backend on it whose keys start with `prefix`.
async fn private(prefix: &str) -> (RedisServer, RedisBackend) {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix(prefix);
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    (server, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_before_its_first_commit_reads_with_its_starting_counters() {
    let (server, backend) = private("fresh:").await;
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
    let (_server, backend) = private("stats:").await;
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

/// A batch of starts goes in one call, as groups of runs in a row that share their workflow,
/// context, first node and extras: each run still gets its own workflow, context, input,
/// idempotency key and deadline, and its first item queued for its own workflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_starts_keeps_each_runs_own_fields() {
    let (_server, backend) = private("groups:").await;
    let deadline = std::time::UNIX_EPOCH + Duration::from_millis(4_102_444_800_000);
    let start = |id: &str, wf: &str, ctx: &[u8], input: &[u8]| {
        StartRun::new(
            id,
            wf,
            ctx.to_vec(),
            NewItem::new(ItemId::ROOT, "a", input.to_vec()),
        )
    };
    let starts = vec![
        start("r1", "Chain", b"1", b"10"),
        start("r2", "Chain", b"1", b"20"),
        start("r3", "Chain", b"2", b"30"),
        start("r4", "Other", b"2", b"40"),
        start("r5", "Other", b"2", b"50").with_deadline(Some(deadline)),
        start("r6", "Other", b"2", b"60")
            .with_idempotency_key(Some("k6".to_owned()))
            .with_deadline(Some(deadline)),
        start("r7", "Other", b"2", b"70").with_idempotency_key(Some("k7".to_owned())),
        start("r8", "Chain", b"1", b"80"),
    ];
    let answers = backend.start_runs(starts).await;
    let ids: Vec<RunId> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"]);
    let expect = [
        ("r1", "Chain", "1", "10", None, false),
        ("r2", "Chain", "1", "20", None, false),
        ("r3", "Chain", "2", "30", None, false),
        ("r4", "Other", "2", "40", None, false),
        ("r5", "Other", "2", "50", None, true),
        ("r6", "Other", "2", "60", Some("k6"), true),
        ("r7", "Other", "2", "70", Some("k7"), false),
        ("r8", "Chain", "1", "80", None, false),
    ];
    for (run, wf, ctx, input, key, has_deadline) in expect {
        let info = backend.run_info(run).await.unwrap();
        assert_eq!(info.workflow, wf, "{run}");
        assert_eq!(info.idempotency_key.as_deref(), key, "{run}");
        assert_eq!(info.deadline, has_deadline.then_some(deadline), "{run}");
        let context = backend.load_context(run).await.unwrap();
        assert_eq!(
            (context.bytes, context.version),
            (ctx.as_bytes().to_vec(), 0),
            "{run}"
        );
        let pending = backend.pending_items(run).await.unwrap();
        assert_eq!(pending, vec![input.as_bytes().to_vec()], "{run}");
    }
    // Each first item is queued for its own workflow.
    for wf in ["Chain", "Other"] {
        let queue = backend
            .queue_stats(wf)
            .await
            .unwrap()
            .expect("queue statistics");
        assert_eq!(queue.ready, 4, "{wf}: {queue:?}");
    }
    // A key already taken, in a later batch, is refused with the run that holds it.
    let again = backend
        .start_runs(vec![
            start("r9", "Other", b"2", b"90").with_idempotency_key(Some("k6".to_owned())),
            start("r1", "Chain", b"1", b"10"),
            start("r10", "Chain", b"1", b"100"),
        ])
        .await;
    match &again[0] {
        Err(DistributedError::DuplicateRun { key, existing }) => {
            assert_eq!((key.as_str(), existing.as_str()), ("k6", "r6"))
        }
        other => panic!("a taken key must be refused: {other:?}"),
    }
    assert!(matches!(&again[1], Err(DistributedError::RunExists(id)) if id == "r1"));
    assert_eq!(again[2].as_deref().ok(), Some("r10"));
}

/// Concurrent single starts of a partition share its start calls: 300 `start_run`s issued at
/// once cost a few script calls, not 300, and each gets its own run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_starts_share_script_calls() {
    let (server, backend) = private("together:").await;
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    // (The workflow's graph is registered by the first start: not counted below.)
    o.start_run(&WorkflowCtx::new(()), 0).await.unwrap();
    let mut conn = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fcalls = |stats: String| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let info = || {
        let mut cmd = ::redis::cmd("INFO");
        cmd.arg("commandstats");
        cmd
    };
    let before = fcalls(info().query_async(&mut conn).await.unwrap());
    let ctx = WorkflowCtx::new(());
    let starts = (1..=300u64).map(|i| o.start_run(&ctx, i));
    let ids: Vec<RunId> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let calls = fcalls(info().query_async(&mut conn).await.unwrap()) - before;
    let distinct: std::collections::BTreeSet<&RunId> = ids.iter().collect();
    assert_eq!(distinct.len(), 300, "every start made its own run");
    // (Without the queue: 300. With it, a few: `join_all` polls its futures in rounds of a
    // few dozen, and a loaded machine may finish a call between two rounds.)
    assert!(
        calls <= 150,
        "300 concurrent starts took {calls} script calls"
    );
    for (i, id) in ids.iter().enumerate().step_by(37) {
        let pending = o.pending_work(id).await.unwrap();
        assert_eq!(pending.len(), 1, "{id}");
        let expected = serde_json::to_value(chain().start_work_item(i as u64 + 1)).unwrap();
        assert_eq!(serde_json::to_value(&pending[0]).unwrap(), expected, "{id}");
    }
}
