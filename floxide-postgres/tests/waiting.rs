//! A waiter woken by a run's completion notification takes the output the notification
//! carried, without reading the run (the outputs themselves are checked by the conformance
//! suite, `g7_waiters_get_short_and_long_outputs`).

use floxide::conformance::{
    a_run_watch_wakes_for_its_own_run_only, a_waiter_takes_the_output_its_event_carried,
    awkward_run_ids_have_their_outputs_heard,
};
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
    let server = PostgresServer::start_or_panic();
    let workers = PostgresBackend::connect(server.url()).await.unwrap();
    let watcher = PostgresBackend::connect(server.url()).await.unwrap();
    awkward_run_ids_have_their_outputs_heard(workers, watcher).await;
}

/// A waiter on one run is woken by that run's notifications only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_watch_wakes_for_its_own_run_only_on_postgres() {
    let server = PostgresServer::start_or_panic();
    let backend = PostgresBackend::connect(server.url()).await.unwrap();
    a_run_watch_wakes_for_its_own_run_only(backend).await;
}
