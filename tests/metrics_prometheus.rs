//! The worker runner's `--metrics-addr`: a real runner serves the worker's metrics to
//! Prometheus while it executes steps that commit, retry, fail and are abandoned.
//!
//! The `prometheus` feature is on in test builds (a dev-dependency of this package turns it
//! on), and this file is its own test binary, because a process has one metrics recorder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use floxide::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

node! {
    pub struct Pass {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n)) }
}

node! {
    /// Fails for 1, runs until its run is cancelled for 2, passes anything else on.
    pub struct Check {};
    input = u64;
    output = u64;
    |_ctx, n| {
        match n {
            1 => Err(FloxideError::generic("1 never passes")),
            2 => {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(Transition::Next(n))
            }
            _ => Ok(Transition::Next(n)),
        }
    }
}

workflow! {
    pub struct Metered { pass: Pass, check: Check }
    start = pass;
    edges { pass => [check]; check => []; }
}

fn metered() -> Metered {
    Metered {
        pass: Pass {},
        check: Check {},
    }
}

/// A port that was free a moment ago.
fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET /metrics` over a plain TCP connection: the body, or `None` while nothing listens.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// The samples of a scrape: `name{label="value",...}` with the labels sorted, to its value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let Some((name, labels)) = series.split_once('{') else {
                return (series.to_owned(), value);
            };
            let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            labels.sort_unstable();
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

/// The key of a sample in [`samples`].
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

/// Scrapes until `ready` holds for the samples (20 s at most), and returns them.
async fn scrape_until(
    addr: SocketAddr,
    worker: &tokio::task::JoinHandle<std::process::ExitCode>,
    what: &str,
    ready: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> (String, BTreeMap<String, f64>) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        assert!(!worker.is_finished(), "the worker runner exited");
        if let Some(body) = scrape(addr).await {
            let found = samples(&body);
            if ready(&found) {
                return (body, found);
            }
            last = body;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no {what} within 20 s; last scrape:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_serves_the_worker_metrics() {
    let addr = free_local_addr();
    let backend = InMemoryBackend::new();
    let args =
        WorkerArgs::parse(["--metrics-addr".to_owned(), addr.to_string()], |_| None).unwrap();
    let workers_backend = backend.clone();
    let worker = tokio::spawn(run_worker(args, move |_| async move {
        let retry_once = RetryPolicy::new(
            2,
            Duration::from_millis(10),
            Duration::from_millis(10),
            BackoffStrategy::Linear,
            RetryError::All,
        );
        metered()
            .worker(workers_backend)
            .retry_policy(retry_once)
            .build()
    }));

    let orch = metered().orchestrator(backend).build().unwrap();
    let ctx = WorkflowCtx::new(());
    let mut passing = Vec::new();
    for n in [10, 20, 30] {
        passing.push((orch.start_run(&ctx, n).await.unwrap(), n));
    }
    let failing = orch.start_run(&ctx, 1).await.unwrap();
    let hanging = orch.start_run(&ctx, 2).await.unwrap();
    for (run, n) in &passing {
        let out = orch
            .wait_for_output(run, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out, *n);
    }
    let failed = tokio::time::timeout(
        Duration::from_secs(20),
        orch.wait_for_completion(&failing, Duration::from_millis(50)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    // Cancel the hanging run once its `check` step runs: the step is abandoned.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the `check` step of the hanging run did not start within 20 s"
        );
        let items = orch.list_work_items(&hanging).await.unwrap();
        if items
            .iter()
            .any(|i| i.node == "check" && i.status == WorkItemStatus::InProgress)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    orch.cancel(&hanging).await.unwrap();

    let wf = [("workflow", "Metered")];
    let step = |node: &'static str, outcome: &'static str| {
        series(
            "floxide_steps_total",
            &[
                ("workflow", "Metered"),
                ("node", node),
                ("outcome", outcome),
            ],
        )
    };
    // The queue is sampled every 5 s: wait for a sample taken after the dead letter.
    let (body, found) = scrape_until(
        addr,
        &worker,
        "abandoned step and sampled dead letter",
        |s| {
            s.contains_key(&step("check", "abandoned"))
                && s.get(&series("floxide_queue_dead_letters", &wf)) == Some(&1.0)
        },
    )
    .await;
    let value = |key: String| {
        *found
            .get(&key)
            .unwrap_or_else(|| panic!("no `{key}` in the scrape:\n{body}"))
    };

    // Every step, by node and outcome: five runs pass `pass`; three pass `check`, one fails
    // it twice (retried, then failed for good) and one is cancelled while it runs.
    assert_eq!(value(step("pass", "committed")), 5.0);
    assert_eq!(value(step("check", "committed")), 3.0);
    assert_eq!(value(step("check", "retried")), 1.0);
    assert_eq!(value(step("check", "failed")), 1.0);
    assert_eq!(value(step("check", "abandoned")), 1.0);
    let outcomes = found
        .keys()
        .filter(|k| k.starts_with("floxide_steps_total{"))
        .count();
    assert_eq!(outcomes, 5, "unexpected step outcomes:\n{body}");

    // The node durations of committed steps: a histogram per node.
    let duration = |suffix: &str, node: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut labels = vec![("workflow", "Metered"), ("node", node)];
        labels.extend_from_slice(extra);
        value(series(
            &format!("floxide_step_duration_seconds_{suffix}"),
            &labels,
        ))
    };
    assert_eq!(duration("count", "pass", &[]), 5.0);
    assert_eq!(duration("count", "check", &[]), 3.0);
    assert_eq!(duration("bucket", "check", &[("le", "+Inf")]), 3.0);
    assert!(duration("sum", "pass", &[]) < 5.0);
    assert!(body.contains("# TYPE floxide_step_duration_seconds histogram"));
    assert!(body.contains("# HELP floxide_steps_total "));

    // Per workflow: this worker's dead letters; no conflicts or lost leases in this workload.
    assert_eq!(value(series("floxide_dead_letters_total", &wf)), 1.0);
    assert_eq!(value(series("floxide_commit_conflicts_total", &wf)), 0.0);
    assert_eq!(value(series("floxide_leases_lost_total", &wf)), 0.0);

    // Sampled from the backend: nothing left to do, the failed item kept as a dead letter.
    assert_eq!(value(series("floxide_queue_depth", &wf)), 0.0);
    assert_eq!(value(series("floxide_queue_delayed", &wf)), 0.0);
    assert_eq!(value(series("floxide_queue_in_flight", &wf)), 0.0);
    assert_eq!(value(series("floxide_leases_reclaimed_total", &wf)), 0.0);
}
