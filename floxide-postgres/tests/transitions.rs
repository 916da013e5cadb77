//! The backend's transitions on a private PostgreSQL server, one by one (the conformance
//! suite runs whole workflows on it).

use std::time::Duration;

use floxide::distributed::*;
use floxide::ItemId;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::PostgresBackend;

async fn setup() -> (PostgresServer, PostgresBackend) {
    let server = PostgresServer::start_or_panic();
    let backend = PostgresBackend::connect(server.url()).await.unwrap();
    (server, backend)
}

fn options(lease_ms: u64, max_deliveries: u32) -> TakeOptions {
    TakeOptions {
        lease_timeout: Duration::from_millis(lease_ms),
        max_deliveries,
    }
}

fn start(run: &str) -> StartRun {
    StartRun::new(
        run,
        "Flow",
        b"{}".to_vec(),
        NewItem::new(ItemId::from_u128(1), "a", b"1".to_vec()),
    )
}

async fn take(b: &PostgresBackend, worker: &WorkerId, opts: TakeOptions, max: usize) -> Vec<Taken> {
    b.take_batch(
        TakeRequest::new("Flow", worker, opts).with_max(max),
        Duration::ZERO,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_from_its_start_to_its_output() {
    let (_server, backend) = setup().await;
    backend.start_run(start("r1")).await.unwrap();
    let me = WorkerId::from("w");
    let first = take(&backend, &me, options(30_000, 5), 4).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].node, "a");
    assert_eq!(first[0].context.as_ref().map(|c| c.version), Some(0));
    assert_eq!(
        backend.run_info("r1").await.unwrap().status,
        RunStatus::Running
    );
    let mut step = StepCommit::new("a");
    step.context = Some((0, b"{\"n\":1}".to_vec()));
    step.successors
        .push(NewItem::new(ItemId::from_u128(2), "b", b"2".to_vec()));
    let outcome = backend.commit(&first[0].lease, &step).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed { finished: None });
    let second = take(&backend, &me, options(30_000, 5), 4).await;
    assert_eq!(second.len(), 1);
    let context = second[0].context.clone().unwrap();
    assert_eq!((context.version, context.bytes), (1, b"{\"n\":1}".to_vec()));
    let mut last = StepCommit::new("b");
    last.outputs.push(serde_json::json!(42));
    let outcome = backend.commit(&second[0].lease, &last).await.unwrap();
    assert_eq!(
        outcome,
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    let info = backend.run_info("r1").await.unwrap();
    assert_eq!(info.output, Some(serde_json::json!(42)));
    assert!(backend.work_items("r1").await.unwrap().is_empty());
    let again = backend.commit(&second[0].lease, &last).await.unwrap();
    assert_eq!(again, CommitOutcome::RunInactive(RunStatus::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_unique_by_id_and_by_key() {
    let (_server, backend) = setup().await;
    backend.start_run(start("r1")).await.unwrap();
    let again = backend.start_run(start("r1")).await.unwrap_err();
    assert!(matches!(again, DistributedError::RunExists(_)), "{again}");
    let keyed = |run: &str| start(run).with_idempotency_key(Some("order-7".to_owned()));
    backend.start_run(keyed("r2")).await.unwrap();
    match backend.start_run(keyed("r3")).await.unwrap_err() {
        DistributedError::DuplicateRun { key, existing } => {
            assert_eq!((key.as_str(), existing.as_str()), ("order-7", "r2"));
        }
        other => panic!("{other}"),
    }
}

/// `len` pseudo-random letters and digits: text PostgreSQL cannot compress.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(ALPHABET[((x >> 33) % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

/// G6: a run id or idempotency key beyond what a PostgreSQL index holds (~2.7 KB after
/// compression) is refused with a typed error and creates nothing; the other runs of the
/// same batch start and run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_over_the_index_limit_is_refused_alone() {
    let (_server, backend) = setup().await;
    let long = incompressible(9_000);
    match backend.start_run(start(&long)).await.unwrap_err() {
        DistributedError::StartRefused(message) => {
            assert!(message.contains("index"), "{message}")
        }
        other => panic!("{other}"),
    }
    assert!(
        matches!(
            backend.run_info(&long).await,
            Err(DistributedError::UnknownRun(_))
        ),
        "a refused start leaves no run"
    );
    let answers = backend
        .start_runs(vec![start("before"), start(&long), start("after")])
        .await;
    assert_eq!(answers[0], Ok("before".to_owned()));
    assert!(
        matches!(answers[1], Err(DistributedError::StartRefused(_))),
        "{:?}",
        answers[1]
    );
    assert_eq!(answers[2], Ok("after".to_owned()));
    let taken = take(&backend, &WorkerId::from("w"), options(30_000, 5), 4).await;
    let mut runs: Vec<&str> = taken.iter().map(|t| t.lease.run_id.as_str()).collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        ["after", "before"],
        "the batch's other runs started whole"
    );
    let keyed = start("keyed").with_idempotency_key(Some(incompressible(9_000)));
    assert!(matches!(
        backend.start_run(keyed).await,
        Err(DistributedError::StartRefused(_))
    ));
    assert!(backend.run_info("keyed").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_reclaimed_and_the_stale_commit_is_refused() {
    let (_server, backend) = setup().await;
    backend.start_run(start("r1")).await.unwrap();
    let (w1, w2) = (WorkerId::from("w1"), WorkerId::from("w2"));
    let first = take(&backend, &w1, options(200, 5), 1).await;
    assert_eq!(first.len(), 1);
    assert!(take(&backend, &w2, options(200, 5), 1).await.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = take(&backend, &w2, options(30_000, 5), 1).await;
    assert_eq!(second.len(), 1, "the expired lease is reclaimed");
    assert!(second[0].lease.token > first[0].lease.token);
    assert_eq!(second[0].deliveries, 2);
    let step = StepCommit::new("a");
    assert_eq!(
        backend.commit(&first[0].lease, &step).await.unwrap(),
        CommitOutcome::LeaseLost,
        "G2: the stale lease does not commit"
    );
    assert_eq!(
        backend
            .heartbeat(&first[0].lease, Duration::from_secs(1))
            .await
            .unwrap(),
        LeaseState::Lost
    );
    assert!(matches!(
        backend.commit(&second[0].lease, &step).await.unwrap(),
        CommitOutcome::Committed { .. }
    ));
    assert_eq!(backend.metrics("r1").await.unwrap().reclaimed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_take_wakes_when_work_arrives() {
    let (_server, backend) = setup().await;
    let waiter = backend.clone();
    let taker = tokio::spawn(async move {
        let me = WorkerId::from("w");
        let started = std::time::Instant::now();
        let got = waiter
            .take_batch(
                TakeRequest::new("Flow", &me, options(30_000, 5)),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        (got.len(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.start_run(start("r1")).await.unwrap();
    let (n, waited) = taker.await.unwrap();
    assert_eq!(n, 1);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the notification: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_lease_each_item_once() {
    let (_server, backend) = setup().await;
    for i in 0..40 {
        backend.start_run(start(&format!("r{i}"))).await.unwrap();
    }
    let takers = (0..4).map(|w| {
        let backend = backend.clone();
        tokio::spawn(async move {
            let me = WorkerId::from(format!("w{w}").as_str());
            let mut got = Vec::new();
            loop {
                let batch = take(&backend, &me, options(30_000, 5), 3).await;
                if batch.is_empty() {
                    break got;
                }
                got.extend(batch.into_iter().map(|t| t.lease.run_id));
            }
        })
    });
    let mut all: Vec<String> = Vec::new();
    for taker in takers {
        all.extend(taker.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(
        (before, all.len()),
        (40, 40),
        "every item leased exactly once"
    );
}

/// Takes the one ready item for `me` and renews its lease once.
async fn take_and_renew(backend: &PostgresBackend, me: &WorkerId) -> Vec<Taken> {
    let first = take(backend, me, options(30_000, 5), 1).await;
    let renewed = backend
        .heartbeat(&first[0].lease, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(renewed, LeaseState::Active(_)), "{renewed:?}");
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_history_can_be_turned_off() {
    let server = PostgresServer::start_or_panic();
    let mut histories = Vec::new();
    for on in [true, false] {
        let config = floxide_postgres::PostgresConfig::new(server.url())
            .with_schema(format!("history_{on}"))
            .with_step_history(on);
        let backend = PostgresBackend::connect_with(config).await.unwrap();
        backend.start_run(start("h")).await.unwrap();
        let me = WorkerId::from("w");
        let first = take_and_renew(&backend, &me).await;
        backend.release(&first[0].lease).await.unwrap();
        let again = take(&backend, &me, options(30_000, 5), 1).await;
        let failed = StepFailed::new("a", "boom", Some(Duration::from_millis(1)));
        backend.fail(&again[0].lease, &failed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let last = take(&backend, &me, options(30_000, 5), 1).await;
        let mut step = StepCommit::new("a");
        step.outputs.push(serde_json::json!(1));
        backend.commit(&last[0].lease, &step).await.unwrap();
        // A late commit of the released lease is refused, and records nothing more.
        let late = backend.commit(&first[0].lease, &step).await.unwrap();
        assert!(!matches!(late, CommitOutcome::Committed { .. }), "{late:?}");
        let history = backend.step_history("h").await.unwrap().unwrap();
        histories.push(history.iter().map(|e| e.kind.name()).collect::<Vec<_>>());
    }
    assert_eq!(
        histories,
        vec![
            vec![
                "leased",
                "renewed",
                "released",
                "leased",
                "failed",
                "leased",
                "committed"
            ],
            vec![]
        ],
        "recorded when on, nothing when off"
    );
}

/// The kinds of `run`'s step history, oldest first.
async fn history_kinds(backend: &PostgresBackend, run: &str) -> Vec<&'static str> {
    let history = backend.step_history(run).await.unwrap().unwrap();
    history.iter().map(|e| e.kind.name()).collect()
}

/// A commit of `lease`'s one-step run, which completes it.
async fn complete(backend: &PostgresBackend, lease: &Lease) {
    let mut step = StepCommit::new("a");
    step.outputs.push(serde_json::json!(1));
    assert_eq!(
        backend.commit(lease, &step).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_keeps_its_step_history_only_when_it_explains_something() {
    let server = PostgresServer::start_or_panic();
    let config = floxide_postgres::PostgresConfig::new(server.url()).with_schema("routine");
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let me = WorkerId::from("w");

    // While a run is live its history shows; a routine one goes when the run completes, its
    // node timings stay.
    backend.start_run(start("plain")).await.unwrap();
    let first = take_and_renew(&backend, &me).await;
    assert_eq!(
        history_kinds(&backend, "plain").await,
        vec!["leased", "renewed"]
    );
    complete(&backend, &first[0].lease).await;
    assert_eq!(history_kinds(&backend, "plain").await, Vec::<&str>::new());
    let metrics = backend.metrics("plain").await.unwrap();
    assert_eq!(
        (metrics.completed, metrics.per_node.len()),
        (1, 1),
        "{metrics:?}"
    );

    // One released lease makes it worth keeping.
    backend.start_run(start("released")).await.unwrap();
    let first = take(&backend, &me, options(30_000, 5), 1).await;
    backend.release(&first[0].lease).await.unwrap();
    let again = take(&backend, &me, options(30_000, 5), 1).await;
    complete(&backend, &again[0].lease).await;
    assert_eq!(
        history_kinds(&backend, "released").await,
        vec!["leased", "released", "leased", "committed"]
    );

    // So does a commit fenced out in the batch that completes the run (a stale token).
    backend.start_run(start("fenced")).await.unwrap();
    let held = take(&backend, &me, options(30_000, 5), 1).await;
    let mut stale = held[0].lease.clone();
    stale.token -= 1;
    let mut step = StepCommit::new("a");
    step.outputs.push(serde_json::json!(1));
    let reply = backend
        .commit_batch(
            &[
                CommitItem::new(&stale, &step),
                CommitItem::new(&held[0].lease, &step),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.outcomes[0], CommitOutcome::LeaseLost);
    assert!(
        matches!(
            reply.outcomes[1],
            CommitOutcome::Committed {
                finished: Some(RunStatus::Completed)
            }
        ),
        "{reply:?}"
    );
    assert_eq!(
        history_kinds(&backend, "fenced").await,
        vec!["leased", "fenced", "committed"]
    );

    // A routine history too long to delete in one bounded statement stays.
    backend.start_run(start("long")).await.unwrap();
    let held = take(&backend, &me, options(30_000, 5), 1).await;
    for _ in 0..1000 {
        let renewed = backend
            .heartbeat(&held[0].lease, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(matches!(renewed, LeaseState::Active(_)), "{renewed:?}");
    }
    complete(&backend, &held[0].lease).await;
    let kinds = history_kinds(&backend, "long").await;
    assert_eq!(
        (kinds.len(), kinds.last().copied()),
        (1000, Some("committed")),
        "the latest 1,000 of its 1,002 events"
    );

    // Kept when the deployment asks for it.
    let config = floxide_postgres::PostgresConfig::new(server.url())
        .with_schema("routine_kept")
        .with_routine_step_history(true);
    let keeping = PostgresBackend::connect_with(config).await.unwrap();
    keeping.start_run(start("plain")).await.unwrap();
    let first = take(&keeping, &me, options(30_000, 5), 1).await;
    complete(&keeping, &first[0].lease).await;
    assert_eq!(
        history_kinds(&keeping, "plain").await,
        vec!["leased", "committed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committing_worker_gets_its_successors_under_a_lease_that_can_expire() {
    let (_server, backend) = setup().await;
    backend.start_run(start("r1")).await.unwrap();
    let (w1, w2) = (WorkerId::from("w1"), WorkerId::from("w2"));
    let first = take(&backend, &w1, options(200, 5), 4).await;
    let mut step = StepCommit::new("a");
    step.context = Some((0, b"{\"n\":1}".to_vec()));
    step.successors
        .push(NewItem::new(ItemId::from_u128(2), "b", b"2".to_vec()));
    let commit = CommitItem::new(&first[0].lease, &step).with_held_context(1, b"{\"n\":1}");
    let next = TakeRequest::new("Flow", &w1, options(200, 5)).with_max(4);
    let reply = backend.commit_batch(&[commit], Some(next)).await.unwrap();
    assert!(matches!(
        reply.outcomes[..],
        [CommitOutcome::Committed { finished: None }]
    ));
    assert_eq!(reply.taken.len(), 1, "the successor is handed over");
    let handed = &reply.taken[0];
    assert_eq!(
        (handed.node.as_str(), handed.lease.token, handed.deliveries),
        ("b", 1, 1)
    );
    assert_eq!(handed.lease.worker, w1);
    let context = handed.context.clone().unwrap();
    assert_eq!((context.version, context.bytes), (1, b"{\"n\":1}".to_vec()));
    assert!(
        take(&backend, &w2, options(30_000, 5), 4).await.is_empty(),
        "a handed-over item is leased, not ready"
    );
    let items = backend.work_items("r1").await.unwrap();
    assert!(
        items.iter().any(|i| i.status == WorkItemStatus::InProgress),
        "{items:?}"
    );

    // Its worker dies: the lease expires and another worker gets the item (G1).
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = take(&backend, &w2, options(30_000, 5), 4).await;
    assert_eq!(again.len(), 1, "the expired hand-off is reclaimed");
    assert_eq!((again[0].lease.token, again[0].deliveries), (2, 2));
    let mut last = StepCommit::new("b");
    last.outputs.push(serde_json::json!(3));
    assert_eq!(
        backend.commit(&handed.lease, &last).await.unwrap(),
        CommitOutcome::LeaseLost
    );
    assert!(matches!(
        backend.commit(&again[0].lease, &last).await.unwrap(),
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    ));
    let history = backend.step_history("r1").await.unwrap().unwrap();
    let kinds: Vec<_> = history.iter().map(|e| (e.kind.name(), e.token)).collect();
    assert_eq!(
        kinds,
        vec![
            ("leased", 1),
            ("committed", 1),
            ("leased", 1),
            ("expired", 1),
            ("leased", 2),
            ("fenced", 1),
            ("committed", 2)
        ]
    );
}

/// Sequential scans of the items table so far (the server's statistics, flushed by each
/// session when it goes idle at most once a second).
async fn item_seq_scans(observer: &tokio_postgres::Client) -> i64 {
    let row = observer
        .query_one(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = 'plans' AND relname = 'items'",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_statements_stay_on_their_indexes_when_the_queue_grows() {
    let server = PostgresServer::start_or_panic();
    let config = floxide_postgres::PostgresConfig::new(server.url())
        .with_schema("plans")
        .with_pool_size(1);
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let (observer, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let me = WorkerId::from("w");
    let opts = options(30_000, 5);
    let next = |max| Some(TakeRequest::new("Flow", &me, opts).with_max(max));
    let step = |n: u128| {
        let mut step = StepCommit::new("a");
        step.successors
            .push(NewItem::new(ItemId::from_u128(n), "b", b"2".to_vec()));
        step
    };

    // The statements are prepared (and their generic plans made) while the queue is tiny.
    backend.start_run(start("warm")).await.unwrap();
    let first = take(&backend, &me, opts, 4).await;
    let warm = step(2);
    backend
        .commit_batch(&[CommitItem::new(&first[0].lease, &warm)], next(4))
        .await
        .unwrap();

    // Then it grows.
    let started = backend
        .start_runs((0..3000).map(|n| start(&format!("r{n}"))).collect())
        .await;
    assert!(started.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    take(&backend, &me, opts, 1).await; // the session goes idle and reports its statistics
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = item_seq_scans(&observer).await;

    let mut taken = take(&backend, &me, opts, 64).await;
    for round in 0..5u128 {
        assert_eq!(taken.len(), 64);
        let steps: Vec<StepCommit> = (0..64).map(|n| step(1000 + round * 64 + n)).collect();
        let commits: Vec<CommitItem<'_>> = taken
            .iter()
            .zip(&steps)
            .map(|(t, s)| CommitItem::new(&t.lease, s))
            .collect();
        let reply = backend.commit_batch(&commits, next(64)).await.unwrap();
        assert!(reply
            .outcomes
            .iter()
            .all(|o| matches!(o, CommitOutcome::Committed { .. })));
        taken = reply.taken;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    take(&backend, &me, opts, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        item_seq_scans(&observer).await,
        before,
        "takes and commits read the items table through its indexes, whatever its size when \
         their plans were made"
    );
}

/// The stored step history rows of `run` (the default schema).
async fn stored_events(server: &PostgresServer, run: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT count(*) FROM floxide.step_events WHERE run_id = $1",
            &[&run],
        )
        .await
        .unwrap()
        .get(0)
}

/// A take writes no history row: its lease event is shown from the item while the step is in
/// flight, and written by what ends it (here a cancel; a commit, failure, release, renewal or
/// expiry likewise), with the time the lease began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_event_is_written_by_what_ends_the_lease() {
    let (server, backend) = setup().await;
    let me = WorkerId::from("w");
    backend.start_run(start("inflight")).await.unwrap();
    let held = take(&backend, &me, options(30_000, 5), 1).await;
    let taken = std::time::SystemTime::now();
    let shown = backend.step_history("inflight").await.unwrap().unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].kind.name(), "leased");
    assert_eq!(shown[0].token, held[0].lease.token);
    assert_eq!(shown[0].worker, Some(me.clone()));
    assert_eq!(stored_events(&server, "inflight").await, 0);

    tokio::time::sleep(Duration::from_millis(20)).await;
    backend
        .control("inflight", RunAction::Cancel)
        .await
        .unwrap();
    let kept = backend.step_history("inflight").await.unwrap().unwrap();
    assert_eq!(
        stored_events(&server, "inflight").await,
        1,
        "written at the cancel"
    );
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].at, shown[0].at, "with the time the lease began");
    assert!(kept[0].at <= taken, "{kept:?}");
    match kept[0].kind {
        StepEventKind::Leased { delivery, until } => {
            assert_eq!(delivery, 1);
            assert!(until > kept[0].at);
        }
        ref other => panic!("{other:?}"),
    }
}
