//! The dashboard in a real browser: headless Chromium, driven over WebDriver (`chromedriver`,
//! through the fantoccini crate), against `floxide ui` (the built binary) on a private
//! `redis-server`, with the workers running in this process. Each test saves a screenshot of
//! the page it ends on under the target directory (`browser-screenshots/`).
//!
//! Chromium and its driver come from the Debian packages `chromium` and `chromium-driver`
//! (`.ci/run` installs them when missing); without them these tests fail with that advice.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Every step of a run started with this input takes a while: the page has time to show it
/// running.
const SLOW: u32 = 7;
/// The first step waits until the run is cancelled.
const BLOCKING: u32 = 99;
/// The routing step fails until [`FIXED`] (and the workers do not retry): a dead letter.
const DOOMED: u32 = 13;

static FIXED: AtomicBool = AtomicBool::new(false);

/// The run's context: which steps ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Merge)]
pub struct Audit {
    pub trail: EventLog<String>,
}

async fn pace(n: u32) {
    if n == SLOW {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

node! {
    /// Receives an order (the blocking one waits for its cancellation).
    pub struct Receive {};
    context = Audit;
    input = u32;
    output = u32;
    |ctx, n| {
        if n == BLOCKING {
            if let Some(step) = floxide::current_step() {
                let _ = tokio::time::timeout(Duration::from_secs(60), step.cancel.cancelled()).await;
            }
        }
        pace(n).await;
        ctx.trail.append(format!("receive {n}"));
        Ok(Transition::Next(n))
    }
}

/// Where an order goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Size {
    Small(u32),
    Large(u32),
}

node! {
    /// Small orders are packed at once, large ones approved first.
    pub struct Route {};
    context = Audit;
    input = u32;
    output = Size;
    |_ctx, n| {
        if n == DOOMED && !FIXED.load(Ordering::SeqCst) {
            return Err(FloxideError::Generic(format!("order {n} has no address")));
        }
        pace(n).await;
        Ok(Transition::Next(if n > 50 { Size::Large(n) } else { Size::Small(n) }))
    }
}

node! {
    pub struct Approve {};
    context = Audit;
    input = u32;
    output = u32;
    |_ctx, n| { pace(n).await; Ok(Transition::Next(n)) }
}

node! {
    pub struct Pack {};
    context = Audit;
    input = u32;
    output = String;
    |_ctx, n| { pace(n).await; Ok(Transition::Next(format!("parcel {n}"))) }
}

workflow! {
    pub struct Shop { receive: Receive, route: Route, approve: Approve, pack: Pack }
    context = Audit;
    start = receive;
    edges {
        receive => [route];
        route => { Size::Small(n) => [pack]; Size::Large(n) => [approve]; };
        approve => [pack];
        pack => [];
    }
}

fn shop() -> Shop {
    Shop {
        receive: Receive {},
        route: Route {},
        approve: Approve {},
        pack: Pack {},
    }
}

static SERVER: OnceLock<RedisServer> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A deployment (its own key prefix on the shared test server) with workers, an
/// orchestrator, `floxide ui` on it, and a headless browser.
struct Dashboard {
    orchestrator: DistributedOrchestrator<Shop, Audit>,
    backend: RedisBackend,
    pool: Option<WorkerPool<Shop, Audit>>,
    base: String,
    browser: Client,
    _ui: Child,
    _driver: Child,
}

impl Dashboard {
    /// A dashboard with its workers running.
    async fn start() -> Self {
        let mut d = Dashboard::without_workers().await;
        d.start_workers();
        d
    }

    /// A dashboard whose workers are started later ([`Dashboard::start_workers`]).
    async fn without_workers() -> Self {
        let server = SERVER.get_or_init(|| RedisServer::start_or_panic(ServerOptions::default()));
        let prefix = format!("ui{}:", NEXT.fetch_add(1, Ordering::SeqCst));
        let client = RedisClient::new(RedisConfig::new(server.url()).with_key_prefix(&prefix))
            .await
            .expect("connect to the test redis-server");
        let backend = RedisBackend::new(client);
        let orchestrator = shop().orchestrator(backend.clone()).build().unwrap();
        let (ui, base) = start_ui(&server.url(), &prefix).await;
        let (driver, browser) = start_browser().await;
        Dashboard {
            orchestrator,
            backend,
            pool: None,
            base,
            browser,
            _ui: ui,
            _driver: driver,
        }
    }

    fn start_workers(&mut self) {
        let worker = shop()
            .worker(self.backend.clone())
            .retry_policy(RetryPolicy::new(
                1,
                Duration::from_millis(10),
                Duration::from_millis(10),
                BackoffStrategy::Linear,
                RetryError::All,
            ))
            .build()
            .unwrap();
        let mut pool = WorkerPool::new(worker, 4).with_id_prefix("browser-worker");
        pool.start();
        self.pool = Some(pool);
    }

    async fn start_run(&self, id: &str, input: u32) {
        self.orchestrator
            .start_run_with_id(&WorkflowCtx::new(Audit::default()), input, id)
            .await
            .unwrap();
    }

    async fn open(&self, path: &str) {
        self.browser
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The text of the element with id `id`, once it exists.
    async fn text_of(&self, id: &str) -> String {
        let element = self
            .browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no element #{id}: {e}"));
        element.text().await.unwrap()
    }

    /// Waits until `#id` reads `expected` (the page updating itself), else fails with what it
    /// read last.
    async fn wait_for_text(&self, id: &str, expected: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // The element is replaced when the page updates: look it up each time.
            let text = match self.browser.find(Locator::Id(id)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} still reads `{text}`, not `{expected}`"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, selector: &str) {
        self.browser
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no `{selector}` to click: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Saves what the browser shows as `<name>.png` under the target directory.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.browser.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    async fn stop(mut self) {
        let _ = self.browser.close().await;
        if let Some(mut pool) = self.pool.take() {
            pool.stop().await;
            pool.join().await;
        }
    }
}

/// Starts `floxide ui` on a free port of the loopback interface; the process and the base URL.
async fn start_ui(redis: &str, prefix: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floxide"))
        .args(["--redis", redis, "--prefix", prefix])
        .args(["ui", "--listen", "127.0.0.1:0"])
        .env_remove("FLOXIDE_UI_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the floxide binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("floxide ui did not announce its address within 20 s")
        .expect("read floxide ui's stderr")
        .expect("floxide ui exited before serving");
    let base = line
        .strip_prefix("floxide ui: ")
        .unwrap_or_else(|| panic!("unexpected first line from floxide ui: {line}"))
        .trim_end_matches('/')
        .to_owned();
    (child, base)
}

/// The first of `candidates` that exists, looking on `PATH` for bare names.
fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().find_map(|name| {
        let path = PathBuf::from(name);
        if path.is_absolute() {
            return path.is_file().then_some(path);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    })
}

const INSTALL_HINT: &str = "the browser tests drive headless Chromium: install the Debian \
packages `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver)";

/// Starts `chromedriver` on a free port and opens a headless Chromium session through it.
async fn start_browser() -> (Child, Client) {
    let driver_path = find_program(&["chromedriver", "/usr/bin/chromedriver"])
        .unwrap_or_else(|| panic!("chromedriver not found: {INSTALL_HINT}"));
    let chromium = find_program(&["chromium", "chromium-browser", "/usr/bin/chromium"])
        .unwrap_or_else(|| panic!("chromium not found: {INSTALL_HINT}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            // Root in a container: no sandbox; a small /dev/shm: use /tmp.
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000"],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities.clone());
        let attempt = builder.connect(&url);
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(client)) => break client,
            Ok(Err(e)) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("no browser session through chromedriver: {e}"),
            Err(_) => panic!("chromedriver opened no browser session within 30 s"),
        }
    };
    (driver, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_from_running_to_completed_on_its_page_without_a_reload() {
    let d = Dashboard::start().await;
    d.start_run("order-slow", SLOW).await;
    d.open("/runs/order-slow").await;
    assert_eq!(d.text_of("status").await, "running");
    // While it runs, its timeline shows the lease of the step in flight.
    let leases = d
        .browser
        .find_all(Locator::Css("#timeline rect.lease"))
        .await
        .unwrap();
    assert!(!leases.is_empty(), "a lease bar while the run runs");
    // A mark that a reload would wipe out.
    d.browser
        .execute("window.floxideMark = 42;", vec![])
        .await
        .unwrap();
    d.wait_for_text("status", "completed", Duration::from_secs(20))
        .await;
    let mark = d
        .browser
        .execute("return window.floxideMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!(42), "the page was reloaded instead of updated");
    assert_eq!(d.text_of("output").await, "\"parcel 7\"");
    assert!(
        d.text_of("input").await.contains('7'),
        "the run's input is shown"
    );
    // The graph shows the nodes that ran as done, and the skipped arm as untouched.
    let graph = d.browser.find(Locator::Id("graph")).await.unwrap();
    let svg = graph.html(true).await.unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    assert!(svg.contains("receive") && svg.contains("approve"), "{svg}");
    // A routine history goes with the completed run (the Redis default): the page says so,
    // and the node timings show the steps that ran.
    assert!(
        d.text_of("timeline").await.contains("a routine history"),
        "{}",
        d.text_of("timeline").await
    );
    let timings = d
        .browser
        .find_all(Locator::Css("#timings tr td:first-child"))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for cell in timings {
        nodes.push(cell.text().await.unwrap());
    }
    nodes.sort();
    assert_eq!(nodes, ["pack", "receive", "route"]);
    d.screenshot("run-completed").await;

    // The runs list shows it too, and followed it live.
    d.open("/").await;
    let row = d
        .browser
        .find(Locator::Css("tr[data-run='order-slow'] .status"))
        .await
        .unwrap();
    assert_eq!(row.text().await.unwrap(), "completed");
    d.screenshot("runs-list").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_cancelled_from_its_page() {
    let d = Dashboard::start().await;
    d.start_run("order-stuck", BLOCKING).await;
    d.open("/runs/order-stuck").await;
    assert_eq!(d.text_of("status").await, "running");
    d.click("#cancel").await;
    d.wait_for_text("status", "cancelled", Duration::from_secs(10))
        .await;
    let info = d.orchestrator.status("order-stuck").await.unwrap();
    assert_eq!(info, RunStatus::Cancelled);
    // A finished run offers no actions any more.
    assert!(d.browser.find(Locator::Id("cancel")).await.is_err());
    d.screenshot("run-cancelled").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_requeued_from_its_page() {
    let d = Dashboard::start().await;
    d.start_run("order-doomed", DOOMED).await;
    let failed = tokio::time::timeout(
        Duration::from_secs(15),
        d.orchestrator
            .wait_for_completion("order-doomed", Duration::from_millis(50)),
    )
    .await
    .expect("the doomed run did not fail")
    .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    d.open("/dead-letters").await;
    assert_eq!(d.text_of("count").await, "1 dead letter");
    let letters = d.text_of("letters").await;
    assert!(letters.contains("order 13 has no address"), "{letters}");
    d.screenshot("dead-letter").await;

    FIXED.store(true, Ordering::SeqCst);
    d.click("#letters button").await; // the letter's Requeue button comes first
    d.wait_for_text("count", "0 dead letters", Duration::from_secs(10))
        .await;
    let done = tokio::time::timeout(
        Duration::from_secs(15),
        d.orchestrator
            .wait_for_completion("order-doomed", Duration::from_millis(50)),
    )
    .await
    .expect("the requeued run did not finish")
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    d.open("/runs/order-doomed").await;
    assert_eq!(d.text_of("status").await, "completed");
    d.screenshot("dead-letter-requeued").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_shows_on_the_timeline_with_the_fenced_out_commit() {
    let mut d = Dashboard::without_workers().await;
    // Slow steps: the zombie's late commit comes while the step runs again.
    d.start_run("order-zombie", SLOW).await;
    // A worker takes the first step and stalls past its lease, then tries to commit.
    let options = TakeOptions {
        lease_timeout: Duration::from_millis(300),
        ..TakeOptions::default()
    };
    let zombie = WorkerId::from("zombie");
    let stalled = d
        .backend
        .take("Shop", &zombie, options, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the first step");
    tokio::time::sleep(Duration::from_millis(600)).await;
    d.start_workers();
    // Once a worker took the step over, the zombie's commit is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let history = d.backend.step_history("order-zombie").await.unwrap();
        let taken_over = history
            .unwrap_or_default()
            .iter()
            .filter(|e| e.kind.name() == "leased")
            .count()
            >= 2;
        if taken_over {
            break;
        }
        assert!(Instant::now() < deadline, "no worker took the step over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = d
        .backend
        .commit(&stalled.lease, &StepCommit::new("receive"))
        .await
        .unwrap();
    assert_eq!(late, CommitOutcome::LeaseLost);
    let done = tokio::time::timeout(
        Duration::from_secs(15),
        d.orchestrator
            .wait_for_completion("order-zombie", Duration::from_millis(50)),
    )
    .await
    .expect("the run did not finish")
    .unwrap();
    assert_eq!(done.status, RunStatus::Completed);

    d.open("/runs/order-zombie").await;
    let expired = d
        .browser
        .find_all(Locator::Css("#timeline rect.lease.expired"))
        .await
        .unwrap();
    assert_eq!(expired.len(), 1, "the zombie's lease expired");
    let timeline = d.text_of("timeline").await;
    assert!(
        timeline.contains("receive · zombie · attempt 1 · delivery 1"),
        "{timeline}"
    );
    assert!(
        timeline.contains("delivery 2"),
        "the step ran again: {timeline}"
    );
    assert!(timeline.contains("commit fenced out"), "{timeline}");
    let events = d.text_of("step-events").await;
    assert!(
        events.contains("refused: the lease was taken over"),
        "{events}"
    );
    // Tall enough for the graph and the timeline together (the README's picture).
    d.browser.set_window_size(1280, 1500).await.unwrap();
    d.screenshot("lease-taken-over").await;
    d.stop().await;
}
