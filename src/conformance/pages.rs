//! Runs listed page by page, with filters (what dashboards and the CLI list runs with).

use std::sync::Arc;
use std::time::Duration;

use crate::distributed::*;
use crate::ItemId;

/// Starts run `id` of `workflow`, its first item at `node` with `payload` (JSON).
async fn start(backend: &Arc<dyn Backend>, id: &str, workflow: &str, node: &str, payload: &str) {
    let first = NewItem::new(ItemId::ROOT, node, payload.as_bytes().to_vec());
    let start = StartRun::new(id, workflow, b"null".to_vec(), first);
    backend.start_run(start).await.expect("start a run");
    // Distinct start times (in wall-clock milliseconds, whatever tokio's clock does), so that
    // the order is not only the ids' tie-break.
    std::thread::sleep(Duration::from_millis(3));
}

/// Every page of `query` (following the cursors), as run ids, and the number of pages.
async fn every_page(backend: &Arc<dyn Backend>, query: RunQuery) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut query = query;
    loop {
        let page = backend.query_runs(&query).await.expect("a page of runs");
        pages += 1;
        assert!(
            page.runs.len() <= query.limit,
            "a page holds at most its limit"
        );
        ids.extend(page.runs.into_iter().map(|r| r.run_id));
        match page.next {
            Some(next) => query = query.after(Some(next)),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the cursors do not end: {ids:?}");
    }
}

/// G7: runs are listed newest first, one page at a time from a cursor, filtered by workflow,
/// status, start time, node and text (the input included, after its step committed); a filter
/// that reads items examines a bounded number of runs per page; a cursor the backend did not
/// write is a typed error.
pub async fn g7_runs_are_listed_page_by_page<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    for i in 0..7 {
        let payload = if i == 3 {
            "\"a Needle here\""
        } else {
            "\"hay\""
        };
        start(&backend, &format!("p{i}"), "Pager", "a", payload).await;
    }
    for i in 0..3 {
        start(&backend, &format!("o{i}"), "Other", "b", "\"hay\"").await;
    }
    backend.control("o1", RunAction::Cancel).await.unwrap();

    // Newest first, every run once, across pages of 3.
    let mut expected = Vec::new();
    for id in ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "o0", "o1", "o2"] {
        expected.push(backend.run_info(id).await.unwrap());
    }
    expected.sort_by_key(|r| std::cmp::Reverse((query::millis(r.started_at), r.run_id.clone())));
    let expected: Vec<String> = expected.into_iter().map(|r| r.run_id).collect();
    let (all, pages) = every_page(&backend, RunQuery::new(3)).await;
    assert_eq!(all, expected, "newest first, each run once");
    assert!(pages >= 4, "10 runs in pages of 3: {pages} pages");
    let first = backend.query_runs(&RunQuery::new(3)).await.unwrap();
    assert_eq!(first.runs.len(), 3);
    assert!(first.next.is_some(), "more pages follow");

    let (pager, _) = every_page(&backend, RunQuery::new(4).workflow("Pager")).await;
    assert_eq!(pager.len(), 7, "{pager:?}");
    assert!(pager.iter().all(|id| id.starts_with('p')));

    let (cancelled, _) = every_page(&backend, RunQuery::new(4).status(RunStatus::Cancelled)).await;
    assert_eq!(cancelled, vec!["o1".to_owned()]);

    let p4 = backend.run_info("p4").await.unwrap().started_at;
    let (since, _) = every_page(&backend, RunQuery::new(4).started_between(Some(p4), None)).await;
    assert_eq!(since, expected[..6].to_vec(), "started at or after p4");
    let (before, _) = every_page(&backend, RunQuery::new(4).started_between(None, Some(p4))).await;
    assert_eq!(before, expected[6..].to_vec(), "started before p4");

    let (at_b, _) = every_page(&backend, RunQuery::new(10).node("b")).await;
    // (The cancelled run's items may be gone already.)
    assert!(
        at_b.contains(&"o0".to_owned())
            && at_b.contains(&"o2".to_owned())
            && at_b.iter().all(|id| id.starts_with('o')),
        "runs with an item at node b: {at_b:?}"
    );

    let (needle, _) = every_page(&backend, RunQuery::new(10).text("NEEDLE")).await;
    assert_eq!(needle, vec!["p3".to_owned()], "text in an item, any case");
    let (by_id, _) = every_page(&backend, RunQuery::new(10).text("o2")).await;
    assert_eq!(by_id, vec!["o2".to_owned()], "text in the run id");

    // A filter that reads items examines at most its budget per page, and says where to go on.
    let thin = RunQuery::new(10).text("nowhere").scan_budget(4);
    let page = backend.query_runs(&thin).await.unwrap();
    assert!(page.runs.is_empty());
    assert!(
        page.next.is_some(),
        "the budget ran out before the runs did"
    );
    let (none, pages) = every_page(&backend, thin).await;
    assert!(none.is_empty());
    assert_eq!(pages, 3, "10 runs examined 4 at a time");

    // A run's input stays searchable after its step committed (its item's payload is gone).
    start(&backend, "in0", "Inputs", "a", "\"an Input Word\"").await;
    let me = WorkerId::from("w");
    let taken = backend
        .take(
            "Inputs",
            &me,
            TakeOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .expect("the run's item");
    let done = backend.commit(&taken.lease, &StepCommit::new("a")).await;
    assert!(
        matches!(done, Ok(CommitOutcome::Committed { .. })),
        "{done:?}"
    );
    if let Some(input) = backend.run_input("in0").await.unwrap() {
        assert_eq!(input, b"\"an Input Word\"".to_vec());
    }
    let (by_input, _) = every_page(&backend, RunQuery::new(10).text("input word")).await;
    assert_eq!(by_input, vec!["in0".to_owned()], "text in the run's input");

    let bad = RunQuery::new(3).after(Some(RunCursor::new("not a cursor")));
    match backend.query_runs(&bad).await {
        Err(DistributedError::InvalidCursor(text)) => assert_eq!(text, "not a cursor"),
        other => panic!("expected InvalidCursor, got {other:?}"),
    }
}
