//! A waiter woken by a run's completion event takes the output the event carried, without
//! reading the run (the outputs themselves are checked by the conformance suite,
//! `g7_waiters_get_short_and_long_outputs`).

use floxide::conformance::{
    a_waiter_takes_the_output_its_event_carried, awkward_run_ids_have_their_outputs_heard,
};
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

const PREFIX: &str = "wait:";

async fn backend(server: &RedisServer) -> RedisBackend {
    let config = RedisConfig::new(server.url()).with_key_prefix(PREFIX);
    RedisBackend::new(RedisClient::new(config).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_elsewhere_takes_the_output_from_the_completion_event() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let (workers, watcher) = (backend(&server).await, backend(&server).await);
    let url = server.url();
    a_waiter_takes_the_output_its_event_carried(workers, watcher, |run| async move {
        // The run's record, in partition 0 of one.
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{PREFIX}{{p0}}:r:{run}");
        let added: usize = redis::cmd("HSET")
            .arg(&key)
            .arg("out")
            .arg("\"stored\"")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(added, 0, "the record of run {run} holds an output at {key}");
    })
    .await;
}

/// G7: a run whose id holds a line break or a tab (or starts with ESC) still gets its
/// completion event whole: a waiter elsewhere hears its output, and no other run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_with_a_line_break_gets_its_event_whole() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let (workers, watcher) = (backend(&server).await, backend(&server).await);
    awkward_run_ids_have_their_outputs_heard(workers, watcher).await;
}
