//! G3: concurrent steps keep each other's context changes, joins fire once, successors see
//! their predecessors' changes, and a run completes only when every branch has.

use super::*;

/// G3: 100 parallel branches each append one event; the final context holds all 100.
pub async fn g3_parallel_branches_keep_every_change<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Fan {
        spread: Spread { n: 100 },
        leaf: Step {
            name: "leaf",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 0).await.unwrap();
    let mut workers = pool(wf, &backend, 8);
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let trace = o.context(&run).await.unwrap();
    let events: BTreeSet<String> = trace.events.events().collect();
    assert_eq!(
        trace.events.len(),
        100,
        "G3: lost or duplicated context changes"
    );
    assert_eq!(events.len(), 100);
    for i in 0..100 {
        assert!(
            events.contains(&format!("leaf:{i}")),
            "G3: branch {i} lost its change"
        );
    }
}

/// G3: 10 runs of a 10-way split joined by a Hold-until-all node, 20 workers: every run
/// completes and each join fires exactly once.
pub async fn g3_joins_fire_exactly_once<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = SplitJoin {
        spread: Spread { n: 10 },
        work: Step {
            name: "work",
            gate: Gate::open(),
        },
        join: Join { total: 10 },
        done: Step {
            name: "done",
            gate: Gate::open(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let mut runs = Vec::new();
    for _ in 0..10 {
        runs.push(o.start_run(&ctx(), 0).await.unwrap());
    }
    let mut workers = pool(wf, &backend, 20);
    for run in &runs {
        let info = finish(&o, run).await;
        assert_eq!(
            info.status,
            RunStatus::Completed,
            "G3: join run {run} did not complete: {info:?}"
        );
        let trace = o.context(run).await.unwrap();
        assert_eq!(
            trace.count("done:10"),
            1,
            "G3: the join fired {} times",
            trace.count("done:10")
        );
        assert_eq!(
            trace
                .events
                .events()
                .filter(|e| e.starts_with("work:"))
                .count(),
            10,
            "G3: a branch's change was lost: {:?}",
            trace.events.events().collect::<Vec<_>>()
        );
        assert_eq!(trace.arrived.snapshot().await.len(), 10);
    }
    workers.try_stop().await.unwrap();
}

/// A run with two terminal branches completes only after both.
pub async fn completion_waits_for_every_branch<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let slow_gate = Gate::holding_first();
    let wf = TwoEnds {
        start: Step {
            name: "start",
            gate: Gate::open(),
        },
        fast: Step {
            name: "fast",
            gate: Gate::open(),
        },
        slow: Step {
            name: "slow",
            gate: slow_gate.clone(),
        },
    };
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let mut workers = pool(wf, &backend, 2);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while o.context(&run).await.unwrap().count("fast:2") == 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        o.status(&run).await.unwrap(),
        RunStatus::Running,
        "completed before the slow branch"
    );
    slow_gate.release();
    let info = finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert_eq!(info.outputs.len(), 2, "both terminal outputs are recorded");
    assert_eq!(o.context(&run).await.unwrap().count("slow:2"), 1);
}

/// Steps of one run never observe a predecessor's context without its changes.
pub async fn g3_successors_see_predecessor_changes<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let o = orchestrator(wf.clone(), &backend);
    let mut workers = pool(wf, &backend, 3);
    let mut runs = Vec::new();
    for i in 0..20 {
        runs.push(o.start_run(&ctx(), i).await.unwrap());
    }
    for run in &runs {
        let info = finish(&o, run).await;
        assert_eq!(info.status, RunStatus::Completed);
        let events: Vec<String> = o.context(run).await.unwrap().events.events().collect();
        assert_eq!(events.len(), 3);
        assert!(
            events[0].starts_with("a:")
                && events[1].starts_with("b:")
                && events[2].starts_with("c:"),
            "{events:?}"
        );
    }
    workers.try_stop().await.unwrap();
}

/// Runs every check with a backend from `make` and the test attribute given.
#[macro_export]
macro_rules! conformance_tests {
    (#[$attr:meta], $make:expr) => {
        $crate::conformance_tests!(@each #[$attr], $make,
            g1_crashed_worker_item_is_rerun,
            g2_zombie_commit_is_rejected,
            g3_parallel_branches_keep_every_change,
            g3_joins_fire_exactly_once,
            g3_successors_see_predecessor_changes,
            g5_retries_are_scheduled,
            g5_poison_items_are_dead_lettered,
            g5_a_worker_dead_letters_a_poison_item,
            g5_a_poison_item_is_routed_by_on_failure,
            g6_corrupt_input_is_dead_lettered,
            g6_panicking_node_is_a_failure,
            g6_invalid_requests_are_typed_errors,
            g7_cancel_stops_the_run,
            g7_pause_holds_until_resume,
            g7_runs_and_workers_are_observable,
            g7_a_batch_start_answers_every_input_in_order,
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
            g7_liveness_shows_a_retry_and_its_attempts,
            g7_a_step_learns_of_a_cancel_it_did_not_hear,
            g2_a_kept_successor_is_leased_to_its_committer,
            g2_a_chain_commits_in_one_call,
            g2_a_chain_refused_midway_keeps_its_first_step,
            g1_a_kept_successor_of_a_dead_worker_is_rerun,
            g4_a_chain_of_fast_steps_is_one_commit,
            g4_a_worker_draining_chains_gives_nothing_back,
            g4_a_commit_carries_a_batch_of_chains,
            g5_a_chained_step_that_fails_is_retried,
            g7_a_slow_chained_step_lets_its_parent_commit,
            g2_a_fan_keeps_its_first_successors,
            g2_a_fan_and_its_leaves_commit_in_one_call,
            g2_a_leaf_refused_inside_a_tree_is_refused_alone,
            g1_kept_leaves_of_a_dead_worker_are_rerun,
            g4_a_fan_of_fast_leaves_is_one_commit,
            g4_a_backlog_of_fans_is_chained_from_the_start,
            g4_chained_steps_waiting_behind_a_slow_commit_are_kept,
            g3_chained_steps_keep_every_change_under_slow_commits
        );
    };
    (@each #[$attr:meta], $make:expr, $($check:ident),*) => {
        $(
            #[$attr]
            async fn $check() {
                let backend = $make.await;
                $crate::conformance::$check(backend).await;
            }
        )*
    };
}
