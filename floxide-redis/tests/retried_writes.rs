//! Requests whose reply is lost (issue 11, cases 6 and 11): a proxy between the client and a
//! private `redis-server` forwards a request, then cuts the connection before the reply. The
//! client sends the request again; the scripts answer a retry as they answered the first
//! attempt, so the caller sees what really happened. And a connection that goes silent is
//! rebuilt.

use std::time::Duration;

use floxide::*;
use floxide_redis::testing::{FaultProxy, RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

node! {
    pub struct Echo {};
    input = u64;
    output = u64;
    |_ctx, n| {
        if n == 13 {
            return Err(FloxideError::generic("thirteen"));
        }
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct One { echo: Echo }
    start = echo;
    edges { echo => []; }
}

struct Setup {
    _server: RedisServer,
    proxy: FaultProxy,
    backend: RedisBackend,
    orchestrator: DistributedOrchestrator<One, ()>,
}

/// A server, a proxy in front of it, and a backend that talks through the proxy.
async fn setup(config: impl FnOnce(RedisConfig) -> RedisConfig) -> Setup {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let proxy = FaultProxy::start(server.port()).await.unwrap();
    let client = RedisClient::new(config(
        RedisConfig::new(proxy.url()).with_key_prefix("cut:"),
    ))
    .await
    .unwrap();
    let backend = RedisBackend::new(client);
    let orchestrator = One { echo: Echo {} }
        .orchestrator(backend.clone())
        .build()
        .unwrap();
    Setup {
        _server: server,
        proxy,
        backend,
        orchestrator,
    }
}

fn options() -> TakeOptions {
    TakeOptions {
        lease_timeout: Duration::from_secs(60),
        max_deliveries: 5,
    }
}

fn done(output: u64) -> StepCommit {
    let mut step = StepCommit::new("echo");
    step.outputs = vec![serde_json::json!(output)];
    step
}

/// Starts a run of `One` (input 1) and takes its first item for `me`.
async fn started_and_taken(s: &Setup, me: &WorkerId) -> (RunId, Taken) {
    let run = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 1)
        .await
        .unwrap();
    let wf = One { echo: Echo {} };
    let taken = s
        .backend
        .take(wf.name(), me, options(), Duration::ZERO)
        .await
        .unwrap()
        .expect("the run's first item");
    (run, taken)
}

/// A step of `taken` that makes its one successor (with its bytes), and that successor's id.
fn handing_on(taken: &Taken) -> (ItemId, StepCommit) {
    let child = taken.lease.item_id.child(0);
    let mut step = StepCommit::new("echo");
    step.successors = vec![NewItem::new(child, "echo", taken.bytes.clone())];
    (child, step)
}

/// Checks that nothing else is ready for `me`, and that `lease` is live: its commit with
/// `output` completes `run`, whose waiter gets that output.
async fn only_this_lease_is_left(
    s: &Setup,
    me: &WorkerId,
    lease: &Lease,
    run: &RunId,
    output: u64,
) {
    let wf = One { echo: Echo {} };
    assert!(s
        .backend
        .take(wf.name(), me, options(), Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    let outcome = s.backend.commit(lease, &done(output)).await.unwrap();
    assert_eq!(
        outcome,
        CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }
    );
    assert_eq!(
        s.orchestrator
            .wait_for_output(run, Duration::from_secs(5))
            .await
            .unwrap(),
        output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_start_finds_its_own_run() {
    let s = setup(|c| c).await;
    s.proxy.cut_after_request(b"FCALL");
    let run = s
        .orchestrator
        .start_run_with_key(&WorkflowCtx::new(()), 1, "order-1")
        .await
        .expect("a retried start is the caller's own start, not a duplicate");
    assert_eq!(s.proxy.cuts(), 1, "the reply was lost once");
    assert_eq!(
        s.orchestrator.status(&run).await.unwrap(),
        RunStatus::Pending
    );
    assert_eq!(s.orchestrator.list_runs(None).await.unwrap().len(), 1);
    // The same with a chosen id.
    s.proxy.cut_after_request(b"FCALL");
    s.orchestrator
        .start_run_with_id(&WorkflowCtx::new(()), 1, "by-id".to_owned())
        .await
        .expect("a retried start is not a RunExists");
    assert_eq!(s.proxy.cuts(), 2);
    // A start of another request with the same key is still refused.
    let again = s
        .orchestrator
        .start_run_with_key(&WorkflowCtx::new(()), 1, "order-1")
        .await;
    assert!(matches!(
        again,
        Err(FloxideError::Distributed(
            DistributedError::DuplicateRun { .. }
        ))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_cancel_is_ok() {
    let s = setup(|c| c).await;
    let run = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 1)
        .await
        .unwrap();
    s.proxy.cut_after_request(b"FCALL");
    s.orchestrator
        .cancel(&run)
        .await
        .expect("a retried cancel is the caller's own cancel");
    assert_eq!(s.proxy.cuts(), 1);
    assert_eq!(
        s.orchestrator.status(&run).await.unwrap(),
        RunStatus::Cancelled
    );
    // A second cancel (another request) is refused, as it should be.
    assert!(s.orchestrator.cancel(&run).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_requeue_is_ok() {
    let s = setup(|c| c).await;
    let wf = One { echo: Echo {} };
    let run = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 13)
        .await
        .unwrap();
    let worker = wf.worker(s.backend.clone()).build().unwrap();
    worker.run_once("w").await.unwrap();
    assert_eq!(
        s.orchestrator.status(&run).await.unwrap(),
        RunStatus::Failed
    );
    let letter = s.orchestrator.dead_letters().await.unwrap().remove(0);
    s.proxy.cut_after_request(b"FCALL");
    s.orchestrator
        .requeue_dead_letter(&run, letter.item_id)
        .await
        .expect("a retried requeue is the caller's own requeue");
    assert_eq!(s.proxy.cuts(), 1);
    assert_eq!(
        s.orchestrator.status(&run).await.unwrap(),
        RunStatus::Running
    );
    assert!(s.orchestrator.dead_letters().await.unwrap().is_empty());
    let items = s.orchestrator.list_work_items(&run).await.unwrap();
    assert_eq!(items[0].status, WorkItemStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_take_leases_nothing_twice() {
    let s = setup(|c| c).await;
    let wf = One { echo: Echo {} };
    let first = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 1)
        .await
        .unwrap();
    let second = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 2)
        .await
        .unwrap();
    let me = WorkerId::from("me");

    // A plain take whose reply is lost: the retry gets the same item, under the same lease.
    s.proxy.cut_after_request(b"FCALL");
    let taken = s
        .backend
        .take(wf.name(), &me, options(), Duration::ZERO)
        .await
        .unwrap()
        .expect("the retry returns the item the lost reply held");
    assert_eq!(s.proxy.cuts(), 1);
    assert_eq!(taken.lease.run_id, first);
    assert_eq!(taken.deliveries, 1, "delivered once");

    // A commit whose reply is lost, with the next take fused in: the retry answers Committed
    // and returns the item the first attempt took.
    s.proxy.cut_after_request(b"FCALL");
    let next = TakeRequest::new(wf.name(), &me, options()).with_max(4);
    let step = done(1);
    let reply = s
        .backend
        .commit_batch(&[CommitItem::new(&taken.lease, &step)], Some(next))
        .await
        .unwrap();
    assert_eq!(s.proxy.cuts(), 2);
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        }],
        "the retried commit reports the commit"
    );
    assert_eq!(
        reply.taken.len(),
        1,
        "the item the lost reply held, not an orphan"
    );
    let following = reply.taken.into_iter().next().unwrap();
    assert_eq!(following.lease.run_id, second);
    assert_eq!(following.deliveries, 1);

    // Nothing else is ready, and the second run's item is leased once, to us.
    only_this_lease_is_left(&s, &me, &following.lease, &second, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_commit_hands_over_its_successor_again() {
    let s = setup(|c| c).await;
    let wf = One { echo: Echo {} };
    let me = WorkerId::from("me");
    let (run, taken) = started_and_taken(&s, &me).await;

    // A commit that makes a successor, with the next take fused in, whose reply is lost: the
    // first attempt handed the successor straight to this worker, and the retry hands over
    // that same lease again (it is not queued, nor leased twice).
    let (child, step) = handing_on(&taken);
    s.proxy.cut_after_request(b"FCALL");
    let next = TakeRequest::new(wf.name(), &me, options()).with_max(4);
    let reply = s
        .backend
        .commit_batch(&[CommitItem::new(&taken.lease, &step)], Some(next))
        .await
        .unwrap();
    assert_eq!(s.proxy.cuts(), 1);
    assert_eq!(
        reply.outcomes,
        vec![CommitOutcome::Committed { finished: None }]
    );
    assert_eq!(reply.taken.len(), 1, "the successor the lost reply held");
    let successor = reply.taken.into_iter().next().unwrap();
    assert_eq!(successor.lease.item_id, child);
    assert_eq!(successor.lease.token, 1, "its first lease, not a new one");
    assert_eq!(successor.deliveries, 1);

    // Nothing else is ready, and the lease handed over again is the live one.
    only_this_lease_is_left(&s, &me, &successor.lease, &run, 7).await;
}

/// A chain of steps that completes its run in one commit (applied at once), whose reply is
/// lost: the retry answers it applied, and the run has the chain's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_chain_commit_that_completed_its_run_answers_applied() {
    let s = setup(|c| c).await;
    let me = WorkerId::from("me");
    let (run, taken) = started_and_taken(&s, &me).await;
    let (child, first) = handing_on(&taken);
    let kept = Lease::new(run.as_str(), child, KEPT_LEASE_TOKEN, me.clone());
    s.proxy.cut_after_request(b"FCALL");
    let reply = s
        .backend
        .commit_batch(
            &[
                CommitItem::new(&taken.lease, &first).with_successor_kept(Duration::from_secs(60)),
                CommitItem::new(&kept, &done(9)),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(s.proxy.cuts(), 1);
    assert!(
        reply
            .outcomes
            .iter()
            .all(|o| matches!(o, CommitOutcome::Committed { .. })),
        "{:?}",
        reply.outcomes
    );
    assert_eq!(
        reply.outcomes.last(),
        Some(&CommitOutcome::Committed {
            finished: Some(RunStatus::Completed)
        })
    );
    assert_eq!(
        s.orchestrator
            .wait_for_output(&run, Duration::from_secs(5))
            .await
            .unwrap(),
        9
    );
    let metrics = s.backend.metrics(run.as_str()).await.unwrap();
    assert_eq!((metrics.total_work_items, metrics.completed), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_retried_too() {
    let s = setup(|c| c).await;
    s.orchestrator
        .start_run(&WorkflowCtx::new(()), 1)
        .await
        .unwrap();
    // The operator's statistics (the CLI's `stats`) read several keys: one lost reply is
    // retried, not reported.
    s.proxy.cut_after_request(b"ZRANGE");
    let stats = s
        .backend
        .stats()
        .await
        .expect("a lost read reply is retried");
    assert_eq!(s.proxy.cuts(), 1);
    assert_eq!(stats.total().runs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_rebuilt() {
    let s = setup(|c| {
        c.with_response_timeout(Duration::from_millis(300))
            .with_retry_window(Duration::from_secs(20))
    })
    .await;
    let run = s
        .orchestrator
        .start_run(&WorkflowCtx::new(()), 1)
        .await
        .unwrap();
    // Every open connection stops answering without closing (a dead peer behind a NAT, a
    // frozen proxy): only a new connection works.
    s.proxy.freeze_existing();
    let status = tokio::time::timeout(Duration::from_secs(15), s.orchestrator.status(&run))
        .await
        .expect("answered within the retry window");
    assert_eq!(status.unwrap(), RunStatus::Pending);
}

/// A batch of starts is one script call: its retry answers each start as the first attempt
/// did, and a run id or idempotency key repeated within the batch is refused the second
/// time, as it would be in separate calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_of_starts_answers_each_start_as_first() {
    let s = setup(|c| c).await;
    let start = |id: &str, key: Option<&str>| {
        StartRun::new(
            id,
            One { echo: Echo {} }.name(),
            b"null".to_vec(),
            NewItem::new(ItemId::ROOT, "echo", b"1".to_vec()),
        )
        .with_idempotency_key(key.map(str::to_owned))
    };
    s.proxy.cut_after_request(b"FCALL");
    let answers = s
        .backend
        .start_runs(vec![
            start("same", None),
            start("same", None),
            start("keyed-1", Some("k")),
            start("keyed-2", Some("k")),
        ])
        .await;
    assert_eq!(s.proxy.cuts(), 1, "the reply was lost once");
    let [first, second, keyed, refused] = <[_; 4]>::try_from(answers).unwrap();
    assert_eq!(first.unwrap(), "same");
    assert!(matches!(second, Err(DistributedError::RunExists(id)) if id == "same"));
    let keyed = keyed.expect("the first start with the key is the batch's own");
    match refused {
        Err(DistributedError::DuplicateRun { key, existing }) => {
            assert_eq!((key.as_str(), existing), ("k", keyed))
        }
        other => panic!("a repeated key within a batch must be refused: {other:?}"),
    }
    assert_eq!(s.orchestrator.list_runs(None).await.unwrap().len(), 2);
}
