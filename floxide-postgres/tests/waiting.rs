//! A waiter woken by a run's completion notification takes the output the notification
//! carried, without reading the run (the outputs themselves are checked by the conformance
//! suite, `g7_waiters_get_short_and_long_outputs`).

use floxide::conformance::a_waiter_takes_the_output_its_event_carried;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::PostgresBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_elsewhere_takes_the_output_from_the_completion_notification() {
    let server = PostgresServer::start_or_panic();
    let workers = PostgresBackend::connect(server.url()).await.unwrap();
    let watcher = PostgresBackend::connect(server.url()).await.unwrap();
    let url = server.url();
    a_waiter_takes_the_output_its_event_carried(workers, watcher, |run| async move {
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let changed = db
            .execute(
                "UPDATE floxide.runs SET output = '\"stored\"'::jsonb WHERE run_id = $1",
                &[&run],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1);
    })
    .await;
}

/// G7: a run whose id holds a tab or a line break (or starts with ESC) still has its output
/// carried by its completion notification: a waiter elsewhere hears it, and no other run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_with_a_tab_gets_its_output_heard() {
    use floxide::distributed::*;
    use floxide::ItemId;
    use std::time::{Duration, Instant};

    let server = PostgresServer::start_or_panic();
    let workers = PostgresBackend::connect(server.url()).await.unwrap();
    let watcher = PostgresBackend::connect(server.url()).await.unwrap();
    let me = WorkerId::from("w");
    let options = TakeOptions {
        lease_timeout: Duration::from_secs(30),
        max_deliveries: 5,
    };
    let start = |id: &str| {
        StartRun::new(
            id,
            "Flow",
            b"null".to_vec(),
            NewItem::new(ItemId::from_u128(1), "a", b"0".to_vec()),
        )
    };
    let take = || {
        workers.take_batch(
            TakeRequest::new("Flow", &me, options).with_max(8),
            Duration::ZERO,
        )
    };
    let finish = |lease: Lease, n: usize| {
        let workers = &workers;
        async move {
            let mut step = StepCommit::new("a");
            step.outputs.push(serde_json::json!(n));
            let outcome = workers.commit(&lease, &step).await.unwrap();
            assert!(matches!(outcome, CommitOutcome::Committed { .. }));
        }
    };
    let heard = |id: &str, patience: Duration| {
        let (watcher, id) = (&watcher, id.to_owned());
        async move {
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                if let Some(heard) = watcher.heard_output(&id) {
                    return Some(heard);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
    };
    // The watcher's listener connects in the background: once it hears a plain run's
    // output, it is listening.
    for attempt in 0.. {
        assert!(attempt < 10, "the watcher never heard a notification");
        let id = format!("warm-{attempt}");
        workers.start_run(start(&id)).await.unwrap();
        let taken = take().await.unwrap();
        finish(taken[0].lease.clone(), 0).await;
        if heard(&id, Duration::from_secs(1)).await.is_some() {
            break;
        }
    }
    let ids = ["tab\there", "two\nlines", "\u{1b}escaped", "here"];
    for id in ids {
        workers.start_run(start(id)).await.unwrap();
    }
    let taken = take().await.unwrap();
    assert_eq!(taken.len(), ids.len());
    for (n, t) in taken.iter().enumerate() {
        finish(t.lease.clone(), n).await;
        let id = t.lease.run_id.as_str();
        assert_eq!(
            heard(id, Duration::from_secs(10)).await,
            Some(n.to_string().into_bytes()),
            "run {id:?} heard its own output"
        );
    }
}
