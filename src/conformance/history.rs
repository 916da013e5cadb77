//! The step history: every lease of a step, and what became of it.

use std::sync::Arc;
use std::time::Duration;

use super::{LEASE, PATIENCE};
use crate::distributed::*;
use crate::ItemId;

/// G7: a run's step history tells what happened to each lease: taken (with its delivery),
/// renewed, expired and taken over, a commit fenced out, a failure with its retry, a release,
/// the commit; each event names the holder, the fencing token and the attempt, in order.
pub async fn g7_step_history_explains_every_lease<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let first = NewItem::new(ItemId::ROOT, "a", b"1".to_vec());
    let start = StartRun::new("history", "Hist", b"null".to_vec(), first);
    backend.start_run(start).await.unwrap();
    let opts = TakeOptions {
        lease_timeout: LEASE,
        max_deliveries: 5,
    };
    let (a, b) = (WorkerId::from("wa"), WorkerId::from("wb"));
    let take = |worker: WorkerId| {
        let backend = Arc::clone(&backend);
        async move {
            backend
                .take("Hist", &worker, opts, PATIENCE)
                .await
                .unwrap()
                .expect("an item")
        }
    };

    let t1 = take(a.clone()).await;
    let renewed = backend.heartbeat(&t1.lease, LEASE).await.unwrap();
    assert_eq!(renewed, LeaseState::Active(RunStatus::Running));
    tokio::time::sleep(LEASE * 3).await;
    let t2 = take(b.clone()).await;
    assert_eq!(t2.deliveries, 2, "taken over after the expiry");
    let zombie = backend.commit(&t1.lease, &StepCommit::new("a")).await;
    assert_eq!(zombie.unwrap(), CommitOutcome::LeaseLost);
    let retry = StepFailed::new("a", "boom", Some(Duration::from_millis(1)));
    backend.fail(&t2.lease, &retry).await.unwrap();
    let t3 = take(b.clone()).await;
    backend.release(&t3.lease).await.unwrap();
    let t4 = take(b.clone()).await;
    let done = backend.commit(&t4.lease, &StepCommit::new("a")).await;
    assert!(
        matches!(done, Ok(CommitOutcome::Committed { .. })),
        "{done:?}"
    );

    let history = backend
        .step_history("history")
        .await
        .unwrap()
        .expect("this backend keeps a step history");
    let seen: Vec<(&str, &str, u64, u32)> = history
        .iter()
        .map(|e| {
            let worker = e.worker.as_ref().map_or("", |w| w.0.as_str());
            (e.kind.name(), worker, e.token, e.attempt)
        })
        .collect();
    let (k1, k2, k3, k4) = (
        t1.lease.token,
        t2.lease.token,
        t3.lease.token,
        t4.lease.token,
    );
    assert_eq!(
        seen,
        vec![
            ("leased", "wa", k1, 1),
            ("renewed", "wa", k1, 1),
            ("expired", "wa", k1, 1),
            ("leased", "wb", k2, 1),
            ("fenced", "wa", k1, 1),
            ("failed", "wb", k2, 1),
            ("leased", "wb", k3, 2),
            ("released", "wb", k3, 2),
            ("leased", "wb", k4, 2),
            ("committed", "wb", k4, 2),
        ],
        "the history in order: {history:#?}"
    );
    assert!(history
        .iter()
        .all(|e| e.item_id == ItemId::ROOT && e.node == "a"));
    assert!(
        history.windows(2).all(|w| w[0].at <= w[1].at),
        "in time order: {history:#?}"
    );
    let deliveries: Vec<u32> = history
        .iter()
        .filter_map(|e| match e.kind {
            StepEventKind::Leased { delivery, until } => {
                assert!(until > e.at, "a lease ends after it starts: {e:?}");
                Some(delivery)
            }
            _ => None,
        })
        .collect();
    assert_eq!(deliveries, vec![1, 2, 1, 1]);
    assert!(
        history
            .iter()
            .any(|e| matches!(e.kind, StepEventKind::Failed { retry_at: Some(_) })),
        "the failure says when it is retried"
    );
    assert!(matches!(
        backend.step_history("no-such-run").await,
        Err(DistributedError::UnknownRun(_))
    ));
}
