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
floxide::conformance_tests!(@each #[tokio::test(flavor = "multi_thread", worker_threads = 2)], backend(),
    g1_crashed_worker_item_is_rerun,
    g2_zombie_commit_is_rejected,
    g3_successors_see_predecessor_changes,
    g5_retries_are_scheduled,
    g5_poison_items_are_dead_lettered,
    g6_corrupt_input_is_dead_lettered,
    g6_panicking_node_is_a_failure,
    g6_invalid_requests_are_typed_errors,
    g7_cancel_stops_the_run,
    g7_pause_holds_until_resume,
    g7_runs_and_workers_are_observable,
    g7_a_run_paused_during_its_last_step_finishes_on_resume,
    g7_resuming_a_run_with_nothing_left_is_refused,
    g5_failures_of_a_cancelled_run_are_not_dead_lettered,
    g4_batches_commit_each_step_on_its_own,
    g4_a_refused_context_change_refuses_the_runs_later_ones,
    g4_a_worker_batches_queued_work,
    g7_node_timings_add_up_within_a_batch,
    g7_waiters_get_short_and_long_outputs,
    model_based_sequences_agree_with_the_machine,
    completion_waits_for_every_branch,
    g3_parallel_branches_keep_every_change,
    g3_joins_fire_exactly_once,
    g7_workflow_graphs_are_registered,
    g7_runs_are_listed_page_by_page,
    g7_step_history_explains_every_lease,
    g1_steps_see_their_attempt_and_a_stable_idempotency_key,
    g1_heartbeats_keep_a_long_step_alive,
    g5_routed_failures_complete_the_run,
    g7_a_stopped_worker_finishes_or_releases_its_steps,
    g4_idle_workers_wake_when_work_arrives,
    g5_a_scheduled_retry_frees_its_worker_and_survives_it,
    g7_liveness_names_the_item_in_progress,
    g7_a_step_learns_of_a_cancel_it_did_not_hear
);
