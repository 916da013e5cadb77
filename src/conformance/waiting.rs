//! Waiting for a run's output, and the outputs a backend's completion events carry.

use super::*;

node! {
    /// `n` times `x`.
    pub struct Repeat {};
    context = Trace;
    input = usize;
    output = String;
    |_ctx, n| { Ok(Transition::Next("x".repeat(n))) }
}

node! {
    /// Its input after a tab.
    pub struct Tabbed {};
    context = Trace;
    input = String;
    output = String;
    |_ctx, s| { Ok(Transition::Next(format!("\t{s}"))) }
}

workflow! {
    /// `repeat → tabbed`: a text output of any length, with a tab in it.
    pub struct Text { repeat: Repeat, tabbed: Tabbed }
    context = Trace;
    start = repeat;
    edges { repeat => [tabbed]; tabbed => []; }
}

impl Text {
    /// The workflow.
    pub fn new() -> Self {
        Text {
            repeat: Repeat {},
            tabbed: Tabbed {},
        }
    }

    /// Its output for input `n`.
    pub fn output(n: usize) -> String {
        format!("\t{}", "x".repeat(n))
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new()
    }
}

/// What `backend` heard of run `run`'s output, waiting up to [`PATIENCE`] for it (a process's
/// listener may hear a completion event a little after the run's waiter returned); `None`
/// when it heard nothing by then.
pub async fn heard_output(backend: &dyn AdminBackend, run: &str) -> Option<Vec<u8>> {
    heard_within(backend, run, PATIENCE).await
}

/// What `backend` heard of run `run`'s output, waiting up to `patience` for it.
async fn heard_within(
    backend: &dyn AdminBackend,
    run: &str,
    patience: Duration,
) -> Option<Vec<u8>> {
    let heard = async {
        loop {
            if let Some(output) = backend.heard_output(run) {
                return output;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(patience, heard).await.ok()
}

/// G7: a waiter gets a run's output, short or long, whatever its run id holds or however long
/// it is (9,000 bytes here: more than a PostgreSQL notification carries). A backend whose
/// completion events carry outputs (`heard_output`) carries a short one as it is, never one
/// over 1 KiB, and never one run's output as another's (a run id with a tab or a line break).
pub async fn g7_waiters_get_short_and_long_outputs<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let o = orchestrator(Text::new(), &backend);
    let mut workers = pool(Text::new(), &backend, 2);
    let short = o.start_run(&ctx(), 3).await.unwrap();
    let long = o.start_run(&ctx(), 2000).await.unwrap();
    let tabbed = o.start_run_with_id(&ctx(), 1, "order\t17").await.unwrap();
    let long_id = o
        .start_run_with_id(&ctx(), 2, "r".repeat(9000))
        .await
        .unwrap();
    for (run, n) in [(&short, 3), (&long, 2000), (&tabbed, 1), (&long_id, 2)] {
        assert_eq!(
            o.wait_for_output(run, PATIENCE).await.unwrap(),
            Text::output(n),
            "G7: the output of run {run:?}"
        );
    }
    // A run id that holds a line break and ends like another run's id: what is heard of the
    // first is never taken for the second.
    let broken = o.start_run_with_id(&ctx(), 4, "early\nlate").await.unwrap();
    assert_eq!(
        o.wait_for_output(&broken, PATIENCE).await.unwrap(),
        Text::output(4)
    );
    let late = o.start_run_with_id(&ctx(), 5, "late").await.unwrap();
    assert_eq!(
        o.wait_for_output(&late, PATIENCE).await.unwrap(),
        Text::output(5),
        "G7: the output of run `late`, not of `early\\nlate`"
    );
    workers.try_stop().await.unwrap();
    if let Some(heard) = backend.heard_output(&short) {
        assert_eq!(heard, serde_json::to_vec(&Text::output(3)).unwrap());
    }
    assert_eq!(backend.heard_output(&long), None, "too long for an event");
    if let Some(heard) = backend.heard_output(&tabbed) {
        assert_eq!(
            heard,
            serde_json::to_vec(&Text::output(1)).unwrap(),
            "a tab in the run id"
        );
    }
}

/// For backends whose completion events carry outputs: a waiter in another process
/// (`watcher`, a second backend value on the store `workers` uses) takes a run's output from
/// the event, without reading the run. `overwrite(run)` must replace the output stored in the
/// run's record with the JSON string `"stored"`; reads show that one afterwards.
pub async fn a_waiter_takes_the_output_its_event_carried<B, F, Fut>(
    workers: B,
    watcher: B,
    overwrite: F,
) where
    B: Backend,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (workers, watcher): (Arc<dyn Backend>, Arc<dyn Backend>) =
        (Arc::new(workers), Arc::new(watcher));
    let o = orchestrator(Text::new(), &workers);
    let mut pool = pool(Text::new(), &workers, 2);
    let run = o.start_run(&ctx(), 3).await.unwrap();
    o.wait_for_output(&run, PATIENCE).await.unwrap();
    pool.try_stop().await.unwrap();
    let heard = heard_output(watcher.as_ref(), &run).await;
    assert_eq!(
        heard,
        Some(serde_json::to_vec(&Text::output(3)).unwrap()),
        "the other process heard the output"
    );
    overwrite(run.clone()).await;
    let elsewhere = orchestrator(Text::new(), &watcher);
    assert_eq!(
        elsewhere.wait_for_output(&run, PATIENCE).await.unwrap(),
        Text::output(3),
        "the waiter takes the output from the event"
    );
    let info = watcher.run_info(&run).await.unwrap();
    assert_eq!(
        info.output,
        Some(serde_json::json!("stored")),
        "reads show the record"
    );
}

/// For backends whose completion events carry outputs: runs named with a tab, a line break or
/// a leading ESC (what the events' lines are made of) have their outputs carried too, each its
/// own (`watcher`: a second backend value on the store `workers` uses).
pub async fn awkward_run_ids_have_their_outputs_heard<B: Backend>(workers: B, watcher: B) {
    let (workers, watcher): (Arc<dyn Backend>, Arc<dyn Backend>) =
        (Arc::new(workers), Arc::new(watcher));
    let o = orchestrator(Text::new(), &workers);
    let mut pool = pool(Text::new(), &workers, 2);
    // A watcher may start listening a little after it connected: once it hears a plain run's
    // output, it is listening.
    let mut listening = false;
    for _ in 0..10 {
        let run = o.start_run(&ctx(), 0).await.unwrap();
        o.wait_for_output(&run, PATIENCE).await.unwrap();
        if heard_within(watcher.as_ref(), &run, Duration::from_secs(1))
            .await
            .is_some()
        {
            listening = true;
            break;
        }
    }
    assert!(listening, "the watcher heard no completion event");
    let ids = ["tab\there", "two\nlines", "\u{1b}escaped", "lines"];
    for (n, id) in ids.into_iter().enumerate() {
        let run = o.start_run_with_id(&ctx(), n + 1, id).await.unwrap();
        assert_eq!(
            o.wait_for_output(&run, PATIENCE).await.unwrap(),
            Text::output(n + 1)
        );
        assert_eq!(
            heard_output(watcher.as_ref(), &run).await,
            Some(serde_json::to_vec(&Text::output(n + 1)).unwrap()),
            "G7: run {id:?} is heard with its own output"
        );
    }
    // A tabbed id whose output is too long to ride: its event names it whole, so no part of
    // the id is ever taken for another run's id, nor the rest for an output.
    let run = o
        .start_run_with_id(&ctx(), 2000, "long\toutput")
        .await
        .unwrap();
    assert_eq!(
        o.wait_for_output(&run, PATIENCE).await.unwrap(),
        Text::output(2000)
    );
    assert_eq!(
        heard_within(watcher.as_ref(), "long", Duration::from_secs(1)).await,
        None,
        "G7: run `long\\toutput`'s event read as run `long` with output `output`"
    );
    pool.try_stop().await.unwrap();
}

/// A backend that tells runs apart ([`AdminBackend::watch_run`]): a watch on one run sleeps
/// through another run's cancel (until its timeout) and wakes on its own run's pause. Not in
/// [`conformance_tests!`]: the trait's default watch hears every run.
pub async fn a_run_watch_wakes_for_its_own_run_only<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let o = orchestrator(Chain::new(Gate::open()), &backend);
    let mine = o.start_run(&ctx(), 1).await.unwrap();
    let other = o.start_run(&ctx(), 2).await.unwrap();
    let quiet = Duration::from_millis(1500);
    let mut watch = backend.watch_run(&mine);
    o.cancel(&other).await.unwrap();
    let before = tokio::time::Instant::now();
    watch.changed(quiet).await;
    assert!(
        before.elapsed() >= quiet - Duration::from_millis(100),
        "woken by another run's change after {:?}",
        before.elapsed()
    );
    o.pause(&mine).await.unwrap();
    let before = tokio::time::Instant::now();
    watch.changed(PATIENCE).await;
    assert!(
        before.elapsed() < PATIENCE / 2,
        "its own run's change did not wake it"
    );
    // The run-wide subscription hears every run.
    let mut all = backend.watch_runs();
    o.resume(&mine).await.unwrap();
    let before = tokio::time::Instant::now();
    all.changed(PATIENCE).await;
    assert!(
        before.elapsed() < PATIENCE / 2,
        "watch_runs missed a change"
    );
}
