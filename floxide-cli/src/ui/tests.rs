//! The dashboard's routes, driven without a socket on the in-memory backend.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use floxide_core::distributed::{
    Backend, InMemoryBackend, NewItem, RunStatus, StartRun, StepFailed, TakeOptions, TakeRequest,
    WorkerHealth, WorkerId,
};
use floxide_core::{EdgeKind, ItemId, WorkflowGraph};
use tower::ServiceExt;

/// A backend with one registered graph and one run waiting at its first node.
async fn backend_with_a_run() -> Arc<dyn Backend> {
    let backend: Arc<dyn Backend> = Arc::new(InMemoryBackend::new());
    let graph = WorkflowGraph::new("Flow", "a")
        .with_node("a", "A", "u32", "u32", false)
        .with_node("b", "B", "u32", "u32", false)
        .with_edge("a", Some("b"), EdgeKind::Direct)
        .with_edge("b", None, EdgeKind::Terminal { pattern: None });
    backend.register_graph(&graph).await.expect("register");
    let start = StartRun::new(
        "run-1",
        "Flow",
        b"{\"n\":1}".to_vec(),
        NewItem::new(ItemId::ROOT, "a", b"1".to_vec()),
    );
    backend.start_run(start).await.expect("start");
    backend
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn post(app: &Router, uri: &str, form: &str) -> (StatusCode, String) {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The page's CSRF token.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form") + 19;
    page[at..at + 32].to_owned()
}

#[tokio::test]
async fn the_runs_list_filters_and_links_to_each_run() {
    let app = super::router(backend_with_a_run().await, None, false);
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("href=\"/runs/run-1\"") && page.contains("pending"),
        "{page}"
    );
    assert!(
        page.contains("new EventSource('/events')"),
        "the list follows changes"
    );
    let (_, none) = get(&app, "/?workflow=Other").await;
    assert!(none.contains("0 runs shown") && !none.contains("run-1"));
    let (_, done) = get(&app, "/?status=completed").await;
    assert!(!done.contains("href=\"/runs/run-1\""));
    let (status, bad) = get(&app, "/?status=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("`sideways` is not a run status"), "{bad}");
}

#[tokio::test]
async fn a_run_page_draws_its_graph_and_its_actions_work_with_the_csrf_token() {
    let backend = backend_with_a_run().await;
    let app = super::router(backend.clone(), None, false);
    let (status, page) = get(&app, "/runs/run-1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<svg") && page.contains("1 waiting"),
        "{page}"
    );
    assert!(page.contains("id=\"context\"") && page.contains("&quot;n&quot;"));
    let (status, svg) = get(&app, "/runs/run-1/graph.svg").await;
    assert_eq!(status, StatusCode::OK);
    assert!(svg.starts_with("<svg"));

    // Without the page's token, an action is refused and changes nothing.
    let (status, refused) = post(&app, "/runs/run-1/cancel", "csrf=forged").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(
        backend.run_info("run-1").await.unwrap().status,
        RunStatus::Pending
    );
    let token = csrf(&page);
    let (status, _) = post(&app, "/runs/run-1/pause", &format!("csrf={token}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        backend.run_info("run-1").await.unwrap().status,
        RunStatus::Paused
    );
    let (status, _) = post(&app, "/runs/run-1/cancel", &format!("csrf={token}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        backend.run_info("run-1").await.unwrap().status,
        RunStatus::Cancelled
    );
    let (status, again) = post(&app, "/runs/run-1/resume", &format!("csrf={token}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
}

#[tokio::test]
async fn unknown_runs_and_actions_get_clear_pages() {
    let app = super::router(backend_with_a_run().await, None, false);
    let (status, page) = get(&app, "/runs/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("there is no run `nope`"), "{page}");
    let (_, run) = get(&app, "/runs/run-1").await;
    let (status, page) = post(&app, "/runs/run-1/explode", &format!("csrf={}", csrf(&run))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("`explode` is not an action"));
}

#[tokio::test]
async fn read_only_hides_and_refuses_actions() {
    let app = super::router(backend_with_a_run().await, None, true);
    let (_, page) = get(&app, "/runs/run-1").await;
    assert!(!page.contains("<form method=\"post\""), "{page}");
    let (status, _) = post(&app, "/runs/run-1/cancel", "csrf=x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let app = super::router(backend_with_a_run().await, Some("s3cret".into()), false);
    let (status, _) = get(&app, "/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .clone()
        .oneshot(Request::get("/?token=s3cret").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("floxide_token=s3cret") && cookie.contains("HttpOnly"));
    let with_cookie = Request::get("/runs/run-1")
        .header(header::COOKIE, "floxide_token=s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(with_cookie).await.unwrap().status(),
        StatusCode::OK
    );
    let bearer = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(bearer).await.unwrap().status(),
        StatusCode::OK
    );
    let wrong = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.oneshot(wrong).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_public_address_needs_a_token() {
    let options = super::UiOptions {
        listen: "0.0.0.0:0".parse().unwrap(),
        token: None,
        read_only: false,
    };
    let err = super::serve(backend_with_a_run().await, options)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("without a token"), "{err}");
}

/// A backend whose run `run-1` has its first item dead-lettered, and a worker's report.
async fn backend_with_a_dead_letter() -> Arc<dyn Backend> {
    let backend = backend_with_a_run().await;
    let me = WorkerId::from("w-1");
    let taken = backend
        .take_batch(
            TakeRequest::new("Flow", &me, TakeOptions::default()),
            std::time::Duration::ZERO,
        )
        .await
        .expect("take");
    let lease = &taken.first().expect("the first item").lease;
    backend
        .fail(lease, &StepFailed::new("a", "it <broke>", None))
        .await
        .expect("fail");
    let health = WorkerHealth {
        worker_id: me,
        workflow: "Flow".to_owned(),
        ..WorkerHealth::default()
    };
    backend.report_worker(&health).await.expect("report");
    backend
}

#[tokio::test]
async fn workers_queues_and_dead_letters_are_shown() {
    let app = super::router(backend_with_a_dead_letter().await, None, false);
    let (status, workers) = get(&app, "/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        workers.contains("1 worker<")
            && workers.contains("w-1")
            && workers.contains("class=\"liveness\">alive<"),
        "{workers}"
    );
    let (_, queues) = get(&app, "/queues").await;
    assert!(queues.contains("<td>Flow</td>"), "{queues}");
    let (_, letters) = get(&app, "/dead-letters").await;
    assert!(letters.contains("1 dead letter<"), "{letters}");
    assert!(
        letters.contains("it &lt;broke&gt;"),
        "the error, escaped: {letters}"
    );
    assert!(letters.contains("href=\"/runs/run-1\""));
}

#[tokio::test]
async fn dead_letters_are_requeued_and_dropped_one_or_all_after_a_count_check() {
    let backend = backend_with_a_dead_letter().await;
    let app = super::router(backend.clone(), None, false);
    let (_, page) = get(&app, "/dead-letters").await;
    let token = csrf(&page);
    // A stale count (the page showed another number): nothing is done.
    let (status, stale) = post(
        &app,
        "/dead-letters/requeue",
        &format!("csrf={token}&expect=5"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{stale}");
    assert!(stale.contains("showed 5 dead letters, there are 1 now"));
    assert_eq!(backend.dead_letters().await.unwrap().len(), 1);
    let (status, bad) = post(
        &app,
        "/dead-letters/drop",
        &format!("csrf={token}&id=nonsense"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, _) = post(
        &app,
        "/dead-letters/requeue",
        &format!("csrf={token}&expect=1"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(backend.dead_letters().await.unwrap().is_empty(), "requeued");
    assert_eq!(
        backend.run_info("run-1").await.unwrap().status,
        RunStatus::Running
    );

    // Dead-letter it again, then drop it by its id; without the token nothing happens.
    let me = WorkerId::from("w-2");
    let taken = backend
        .take_batch(
            TakeRequest::new("Flow", &me, TakeOptions::default()),
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    backend
        .fail(&taken[0].lease, &StepFailed::new("a", "again", None))
        .await
        .unwrap();
    let id = format!("run-1:{}", ItemId::ROOT);
    let (status, _) = post(&app, "/dead-letters/drop", &format!("csrf=forged&id={id}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(backend.dead_letters().await.unwrap().len(), 1);
    let (status, _) = post(&app, "/dead-letters/drop", &format!("csrf={token}&id={id}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(backend.dead_letters().await.unwrap().is_empty(), "dropped");
}

/// A backend with `n` runs of "Flow" (`run-0` oldest), each waiting at its first node with
/// its number as input.
async fn backend_with_runs(n: usize) -> Arc<dyn Backend> {
    let backend: Arc<dyn Backend> = Arc::new(InMemoryBackend::new());
    for i in 0..n {
        let first = NewItem::new(ItemId::ROOT, "a", format!("{i}").into_bytes());
        let start = StartRun::new(format!("run-{i}"), "Flow", b"null".to_vec(), first);
        backend.start_run(start).await.expect("start");
        // Distinct start times: newest first is then start order reversed.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    backend
}

/// The `href` of the element with `id`.
fn link(page: &str, id: &str) -> String {
    let pattern = format!("id=\"{id}\" href=\"");
    let at = page.find(&pattern).expect("the link") + pattern.len();
    page[at..at + page[at..].find('"').expect("end of link")].replace("&amp;", "&")
}

#[tokio::test]
async fn the_runs_list_pages_on_the_server_and_filters_by_node_text_and_time() {
    let app = super::router(backend_with_runs(55).await, None, false);
    let (_, first) = get(&app, "/").await;
    assert!(first.contains("50 runs shown"), "{first}");
    assert!(first.contains("run-54") && !first.contains("\"run-4\""));
    let (_, second) = get(&app, &link(&first, "next")).await;
    assert!(second.contains("5 runs shown"), "{second}");
    assert!(second.contains("data-run=\"run-4\"") && !second.contains("data-run=\"run-5\""));
    assert!(
        !second.contains("id=\"next\""),
        "the last page links no further"
    );

    let (_, text) = get(&app, "/?q=run-17").await;
    assert!(
        text.contains("1 run shown") && text.contains("data-run=\"run-17\""),
        "{text}"
    );
    let (_, node) = get(&app, "/?node=zz").await;
    assert!(node.contains("0 runs shown"), "{node}");
    let (_, recent) = get(&app, "/?since=1h").await;
    assert!(recent.contains("50 runs shown"), "{recent}");
    let (_, future) = get(&app, "/?since=2999-01-01T00:00:00Z").await;
    assert!(future.contains("0 runs shown"), "{future}");

    let (status, bad) = get(&app, "/?since=yesterday-ish").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("neither a time"), "{bad}");
    let (status, bad) = get(&app, "/?after=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("is not a page of this list"), "{bad}");
}

#[tokio::test]
async fn bulk_actions_count_first_and_act_only_on_that_count() {
    let backend = backend_with_runs(4).await;
    backend
        .control("run-0", floxide_core::distributed::RunAction::Cancel)
        .await
        .unwrap();
    let app = super::router(backend.clone(), None, false);
    let (_, list) = get(&app, "/?workflow=Flow").await;
    let preview_link = link(&list, "bulk-cancel");
    let (status, preview) = get(&app, &preview_link).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        preview.contains("This would cancel 3 runs."),
        "the cancelled run is not counted: {preview}"
    );
    let token = csrf(&preview);

    // A run started after the dry run: the count no longer holds, nothing is done.
    let first = NewItem::new(ItemId::ROOT, "a", b"9".to_vec());
    backend
        .start_run(StartRun::new("run-late", "Flow", b"null".to_vec(), first))
        .await
        .unwrap();
    let form = format!("csrf={token}&action=cancel&expect=3&workflow=Flow");
    let (status, changed) = post(&app, "/bulk", &form).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(changed.contains("matches 4 runs now"), "{changed}");
    assert_eq!(
        backend.run_info("run-1").await.unwrap().status,
        RunStatus::Pending
    );

    let form = format!("csrf={token}&action=cancel&expect=4&workflow=Flow");
    let (status, _) = post(&app, "/bulk", &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for run in ["run-1", "run-2", "run-3", "run-late"] {
        assert_eq!(
            backend.run_info(run).await.unwrap().status,
            RunStatus::Cancelled
        );
    }

    let (status, _) = post(&app, "/bulk", "csrf=wrong&action=cancel&expect=0").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, bad) = get(&app, "/bulk?action=explode&workflow=Flow").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("not a bulk action"), "{bad}");
    let read_only = super::router(backend, None, true);
    let (_, list) = get(&read_only, "/?workflow=Flow").await;
    assert!(!list.contains("bulk-cancel"));
    let (status, _) = get(&read_only, "/bulk?action=cancel&workflow=Flow").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn dead_letters_of_matching_runs_are_requeued_in_bulk() {
    let backend = backend_with_a_dead_letter().await;
    let app = super::router(backend.clone(), None, false);
    let (_, preview) = get(&app, "/bulk?action=requeue&status=failed").await;
    assert!(
        preview.contains("This would requeue 1 dead letter."),
        "{preview}"
    );
    let form = format!(
        "csrf={}&action=requeue&expect=1&status=failed",
        csrf(&preview)
    );
    let (status, _) = post(&app, "/bulk", &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(backend.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn workers_show_their_step_rate_and_queues_chart_the_last_minutes() {
    let backend = backend_with_a_run().await;
    let state = super::app_state(backend.clone(), None, false);
    let app = super::routes(state.clone());
    let workflows = vec!["Flow".to_owned()];
    let (_, queues) = get(&app, "/queues").await;
    assert!(queues.contains("collecting"), "no readings yet: {queues}");
    let mut health = WorkerHealth {
        worker_id: WorkerId::from("w-1"),
        workflow: "Flow".to_owned(),
        ..WorkerHealth::default()
    };
    for steps in [10, 30, 70] {
        health.steps_done = steps;
        backend.report_worker(&health).await.unwrap();
        state.history.sample(&*backend, &workflows).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, workers) = get(&app, "/workers").await;
    assert!(workers.contains("<td>70</td>"), "the step count: {workers}");
    let rate = workers
        .split("class=\"rate\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|r| r.parse::<f64>().ok())
        .expect("a rate");
    // 40 steps in about 0.1 s.
    assert!(rate > 100.0 && rate < 400.0, "{rate}");
    let (_, queues) = get(&app, "/queues").await;
    assert!(queues.contains("<polyline"), "a chart: {queues}");
    assert!(queues.contains("steps/s now"), "{queues}");
}
