//! Every `floxide` command, end to end: the built binary against a private `redis-server`
//! (and the commands that do not depend on Redis's settings, again against a private
//! PostgreSQL), on runs made by real orchestrators and workers of a workflow defined here.
//! Table output and `--json` are both checked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use floxide::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig};
use floxide_redis::testing::{RedisCluster, RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

// Inputs that select a behaviour; each test uses its own, so tests do not interfere.
/// Every step sleeps, so that a wait sees progress.
const SLOW: u32 = 50;
/// The first step waits until [`RELEASED`].
const BLOCKING: u32 = 99;
/// The first step fails until [`FIXED`].
const BROKEN: std::ops::RangeInclusive<u32> = 7..=10;
/// The first step always fails.
const DOOMED: u32 = 13;

static RELEASED: AtomicBool = AtomicBool::new(false);
static FIXED: AtomicBool = AtomicBool::new(false);

/// The run's context: which nodes ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Merge)]
pub struct Audit {
    pub trail: EventLog<String>,
}

node! {
    pub struct Check {};
    context = Audit;
    input = u32;
    output = u32;
    |ctx, n| {
        if n == DOOMED || (BROKEN.contains(&n) && !FIXED.load(Ordering::SeqCst)) {
            return Err(FloxideError::Generic(format!("item {n} is broken")));
        }
        while n == BLOCKING && !RELEASED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n == SLOW {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        ctx.trail.append(format!("check {n}"));
        Ok(Transition::Next(n))
    }
}

node! {
    pub struct Double {};
    context = Audit;
    input = u32;
    output = u32;
    |_ctx, n| {
        if n == SLOW {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Ok(Transition::Next(n * 2))
    }
}

node! {
    pub struct Report {};
    context = Audit;
    input = u32;
    output = String;
    |_ctx, n| {
        if n == 2 * SLOW {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Ok(Transition::Next(format!("total {n}")))
    }
}

workflow! {
    pub struct Pipeline { check: Check, double: Double, report: Report }
    context = Audit;
    start = check;
    edges { check => [double]; double => [report]; report => []; }
}

fn pipeline() -> Pipeline {
    Pipeline {
        check: Check {},
        double: Double {},
        report: Report {},
    }
}

type Orchestrator = DistributedOrchestrator<Pipeline, Audit>;
type Pool = WorkerPool<Pipeline, Audit>;

static SERVER: OnceLock<RedisServer> = OnceLock::new();
static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The tests that flip [`RELEASED`] or [`FIXED`] run one at a time (each backend runs them).
static FLAGS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One deployment (a key prefix, or a schema, of its own) on a shared test server.
struct Deployment {
    url: String,
    prefix: String,
    /// The connection flags of the binary.
    connection: Vec<String>,
    backend: Arc<dyn Backend>,
    orchestrator: Orchestrator,
}

/// What the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Deployment {
    async fn new() -> Self {
        Deployment::with_partitions(1).await
    }

    async fn with_partitions(partitions: u32) -> Self {
        let server = SERVER.get_or_init(|| RedisServer::start_or_panic(ServerOptions::default()));
        let prefix = format!("cli{}:", NEXT.fetch_add(1, Ordering::SeqCst));
        let config = RedisConfig::new(server.url())
            .with_key_prefix(&prefix)
            .with_partitions(partitions);
        let client = RedisClient::new(config)
            .await
            .expect("connect to the test redis-server");
        let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(client));
        let orchestrator = pipeline().orchestrator(backend.clone()).build().unwrap();
        Deployment {
            connection: ["--redis", &server.url(), "--prefix", &prefix]
                .map(String::from)
                .to_vec(),
            url: server.url(),
            prefix,
            backend,
            orchestrator,
        }
    }

    /// A deployment under a key prefix of its own on the shared Redis Cluster (six servers),
    /// named to the binary by a `redis+cluster://` URL.
    async fn cluster() -> Self {
        let cluster = CLUSTER.get_or_init(RedisCluster::start_or_panic);
        let prefix = format!("clu{}:", NEXT.fetch_add(1, Ordering::SeqCst));
        let url = cluster.url();
        let client = RedisClient::new(RedisConfig::new(&url).with_key_prefix(&prefix))
            .await
            .expect("connect to the test cluster");
        let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(client));
        let orchestrator = pipeline().orchestrator(backend.clone()).build().unwrap();
        Deployment {
            connection: ["--backend", &url, "--prefix", &prefix]
                .map(String::from)
                .to_vec(),
            url,
            prefix,
            backend,
            orchestrator,
        }
    }

    /// A deployment in a schema of its own on the shared PostgreSQL test server.
    async fn postgres() -> Self {
        let server = POSTGRES.get_or_init(PostgresServer::start_or_panic);
        let schema = format!("cli{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let config = PostgresConfig::new(server.url()).with_schema(&schema);
        let backend: Arc<dyn Backend> = Arc::new(
            PostgresBackend::connect_with(config)
                .await
                .expect("connect to the test PostgreSQL"),
        );
        let orchestrator = pipeline().orchestrator(backend.clone()).build().unwrap();
        Deployment {
            connection: ["--backend", &server.url(), "--schema", &schema]
                .map(String::from)
                .to_vec(),
            url: server.url(),
            prefix: schema,
            backend,
            orchestrator,
        }
    }

    async fn start(&self, id: &str, input: u32) -> String {
        self.orchestrator
            .start_run_with_id(&WorkflowCtx::new(Audit::default()), input, id)
            .await
            .unwrap()
    }

    fn pool(&self, size: usize) -> Pool {
        self.pool_with(size, pipeline().worker(self.backend.clone()))
    }

    fn pool_with(&self, size: usize, builder: WorkerBuilder<Pipeline, Audit>) -> Pool {
        let mut pool = WorkerPool::new(builder.build().unwrap(), size)
            .with_id_prefix("cli-worker")
            .with_grace_period(Duration::from_secs(5));
        pool.start();
        pool
    }

    async fn finished(&self, run: &str) -> RunInfo {
        tokio::time::timeout(
            Duration::from_secs(15),
            self.orchestrator
                .wait_for_completion(run, Duration::from_millis(50)),
        )
        .await
        .unwrap_or_else(|_| panic!("run {run} did not finish"))
        .unwrap()
    }

    /// Runs `floxide <args>` on this deployment.
    async fn floxide(&self, args: &[&str]) -> Run {
        let mut command = floxide_command();
        command.args(args).args(&self.connection);
        run(command).await
    }

    /// The table output of a command that must succeed.
    async fn table(&self, args: &[&str]) -> String {
        let run = self.floxide(args).await;
        assert_eq!(
            run.code,
            Some(0),
            "floxide {args:?} failed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        run.stdout
    }

    /// The JSON output of a command that must succeed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.table(&args).await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("floxide {args:?} printed no JSON ({e}):\n{text}"))
    }

    /// The stderr of a command that must fail with `code`.
    async fn fails(&self, code: i32, args: &[&str]) -> String {
        let run = self.floxide(args).await;
        assert_eq!(
            run.code,
            Some(code),
            "floxide {args:?} should exit with {code}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        run.stderr
    }
}

/// The binary, with none of its variables set.
fn floxide_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_floxide"));
    for var in [
        "FLOXIDE_BACKEND_URL",
        "FLOXIDE_PG_SCHEMA",
        "FLOXIDE_REDIS_URL",
        "FLOXIDE_REDIS_PREFIX",
        "FLOXIDE_REDIS_PARTITIONS",
        "FLOXIDE_REDIS_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command
}

async fn run(mut command: tokio::process::Command) -> Run {
    let out = command.output().await.expect("run the floxide binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` until it holds (5 s at most).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_show_and_wait() {
    runs_list_show_and_wait_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_list_show_and_wait() {
    runs_list_show_and_wait_on(Deployment::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_list_show_and_wait() {
    runs_list_show_and_wait_on(Deployment::postgres().await).await;
}

async fn runs_list_show_and_wait_on(d: Deployment) {
    let mut pool = d.pool(2);
    d.start("first", 1).await;
    assert_eq!(d.finished("first").await.status, RunStatus::Completed);
    d.start("second", 2).await;
    d.finished("second").await;

    let table = d.table(&["runs", "list"]).await;
    assert_contains(
        &table,
        &[
            "RUN",
            "STATUS",
            "first",
            "second",
            "Pipeline",
            "completed",
            "\"total 4\"",
        ],
    );
    assert!(
        table.find("second") < table.find("first"),
        "newest first:\n{table}"
    );
    let runs = d.json(&["runs", "list"]).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["run_id"], "first");
    assert_eq!(runs[1]["status"], "completed");
    assert_eq!(runs[1]["output"], "total 2");
    assert!(runs[1]["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(runs[1]["finished_at"].is_string());
    let limited = d.table(&["runs", "list", "--limit", "1"]).await;
    assert_contains(&limited, &["second", "(1 of 2 runs shown"]);
    assert!(!limited.contains("first"));
    assert_eq!(
        d.table(&["runs", "list", "--status", "running"]).await,
        "no runs\n"
    );
    let failed = d.json(&["runs", "list", "--status", "failed"]).await;
    assert_eq!(failed, serde_json::json!([]));

    let show = d.table(&["runs", "show", "first"]).await;
    assert_contains(
        &show,
        &[
            "run              first",
            "status           completed",
            "progress         3 of 3 items completed, 0 outstanding",
            "\"total 2\"",
            "{\"trail\":",
            "metrics: 3 items, 3 steps completed, 0 failed",
            "NODE",
            "check",
            "double",
            "report",
            "items: 3 (not kept once the run finished)",
            "errors: none",
        ],
    );
    let details = d.json(&["runs", "show", "first", "--all-items"]).await;
    assert_eq!(details["run"]["status"], "completed");
    assert_eq!(details["progress"]["completed"], 3);
    assert_eq!(details["progress"]["outstanding"], 0);
    assert_eq!(details["metrics"]["completed"], 3);
    assert_eq!(details["metrics"]["per_node"]["check"]["steps"], 1);
    assert!(
        details["context"]["trail"].to_string().contains("check 1"),
        "{details}"
    );
    // The items of a completed run are not kept (its record, context and output are).
    assert_eq!(details["items"], serde_json::json!([]));
    assert_eq!(details["progress"]["total"], 3);
    assert_eq!(details["errors"], serde_json::json!([]));

    // A finished run: no wait.
    let waited = d.table(&["runs", "wait", "first"]).await;
    assert_contains(&waited, &["status", "completed", "\"total 2\""]);

    // A run that takes a while: progress on stderr, the record on stdout.
    d.start("slow", SLOW).await;
    let run = d.floxide(&["runs", "wait", "slow", "--poll", "0.05"]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_contains(&run.stdout, &["slow", "completed", "\"total 100\""]);
    assert_contains(
        &run.stderr,
        &["slow: 3/3 items completed, 0 outstanding, completed"],
    );
    assert!(
        run.stderr.lines().count() >= 2,
        "no progress seen:\n{}",
        run.stderr
    );
    d.start("slow-json", SLOW).await;
    let waited = d
        .json(&["runs", "wait", "slow-json", "--poll", "0.05"])
        .await;
    assert_eq!(waited["status"], "completed");
    assert_eq!(waited["output"], "total 100");

    let error = d.fails(1, &["runs", "show", "nope"]).await;
    assert_contains(&error, &["error: unknown run `nope`"]);
    d.fails(2, &["runs", "list", "--status", "bogus"]).await;
    d.fails(2, &["runs", "frobnicate"]).await;
    pool.try_stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_list_show_and_draw() {
    graphs_list_show_and_draw_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_graphs_list_show_and_draw() {
    graphs_list_show_and_draw_on(Deployment::postgres().await).await;
}

/// `floxide graphs`: what the orchestrator registered when it started a run, listed, shown
/// as a table and as JSON, and drawn as SVG; an unknown workflow is a clear error.
async fn graphs_list_show_and_draw_on(d: Deployment) {
    assert_contains(
        &d.table(&["graphs", "list"]).await,
        &["no registered graphs"],
    );
    d.start("g1", 1).await;
    let hash = pipeline().graph().hash();
    assert_contains(
        &d.table(&["graphs", "list"]).await,
        &["Pipeline", &hash, "3"],
    );
    let shown = d.table(&["graphs", "show", "Pipeline"]).await;
    assert_contains(
        &shown,
        &[
            "Pipeline",
            &hash,
            "check",
            "Check",
            "u32",
            "alloc::string::String",
            "double",
            "report",
            "direct",
            "terminal",
        ],
    );
    let json = d
        .json(&["graphs", "show", "Pipeline", "--hash", &hash[..6]])
        .await;
    assert_eq!(json["hash"], hash.as_str());
    assert_eq!(json["graph"]["edges"][0]["kind"], "direct");
    let svg = d.table(&["graphs", "show", "Pipeline", "--svg"]).await;
    assert!(
        svg.starts_with("<svg") && svg.contains(r#"data-node="report""#),
        "{svg}"
    );
    assert_eq!(svg.matches(r#"class="edge""#).count(), 3);
    let err = d.fails(1, &["graphs", "show", "Nope"]).await;
    assert_contains(&err, &["no registered graph of workflow `Nope`"]);
    let err = d
        .fails(1, &["graphs", "show", "Pipeline", "--hash", "ffff"])
        .await;
    assert_contains(&err, &["with hash `ffff`", &hash]);

    // The run drawn as its graph: waiting at its first node, then done everywhere.
    let node = |svg: &str, name: &str| {
        let at = svg
            .find(&format!(r#"data-node="{name}""#))
            .unwrap_or_else(|| panic!("no node {name} in {svg}"));
        svg[at..at + svg[at..].find("</g>").unwrap_or(0)].to_owned()
    };
    let waiting = d.table(&["runs", "show", "g1", "--svg"]).await;
    assert_contains(&node(&waiting, "check"), &["1 waiting"]);
    assert!(!node(&waiting, "report").contains("class=\"states\""));
    let mut pool = d.pool(1);
    d.finished("g1").await;
    pool.try_stop().await.unwrap();
    let done = d.table(&["runs", "show", "g1", "--svg"]).await;
    for name in ["check", "double", "report"] {
        assert_contains(&node(&done, name), &["1 done", "#d4edda"]);
    }
    let err = d.fails(1, &["runs", "show", "nope", "--svg"]).await;
    assert_contains(&err, &["nope"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pause_resume_cancel() {
    runs_pause_resume_cancel_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_pause_resume_cancel() {
    runs_pause_resume_cancel_on(Deployment::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_pause_resume_cancel() {
    runs_pause_resume_cancel_on(Deployment::postgres().await).await;
}

async fn runs_pause_resume_cancel_on(d: Deployment) {
    // No workers yet: the runs stay pending.
    d.start("held", 3).await;
    d.start("doomed", 4).await;
    d.start("stuck", 5).await;

    let paused = d.table(&["runs", "pause", "held"]).await;
    assert_eq!(paused, "run held paused: it is now paused\n");
    let show = d.json(&["runs", "show", "held"]).await;
    assert_eq!(show["run"]["status"], "paused");
    // A ready item of a paused run is held until the resume.
    assert_eq!(show["items"][0]["status"], "held");
    assert!(show["items"][0]["payload"].is_object(), "{show}");
    assert_eq!(show["items"][0]["worker"], Value::Null);
    assert_eq!(show["items"][0]["lease_deadline"], Value::Null);
    let error = d.fails(1, &["runs", "pause", "held"]).await;
    assert_contains(&error, &["run `held` is paused: cannot pause"]);
    let resumed = d.json(&["runs", "resume", "held"]).await;
    assert_eq!(resumed["run_id"], "held");
    assert_eq!(resumed["status"], "running");

    let cancelled = d.table(&["runs", "cancel", "doomed"]).await;
    assert_eq!(cancelled, "run doomed cancelled: it is now cancelled\n");
    let error = d.fails(1, &["runs", "cancel", "doomed"]).await;
    assert_contains(&error, &["run `doomed` is cancelled: cannot cancel"]);
    let again = d.json(&["runs", "list", "--status", "cancelled"]).await;
    assert_eq!(again[0]["run_id"], "doomed");
    let paused = d.json(&["runs", "pause", "stuck"]).await;
    assert_eq!(paused["status"], "paused");

    let mut pool = d.pool(1);
    let waited = d.json(&["runs", "wait", "held"]).await;
    assert_eq!(waited["status"], "completed");
    assert_eq!(waited["output"], "total 6");
    // Waiting for a run that did not complete fails, after printing it.
    let run = d.floxide(&["runs", "wait", "doomed"]).await;
    assert_eq!(run.code, Some(1));
    assert_contains(&run.stdout, &["cancelled"]);
    assert_contains(&run.stderr, &["run `doomed` finished as cancelled"]);
    let error = d
        .fails(1, &["runs", "wait", "stuck", "--timeout", "0.3", "--quiet"])
        .await;
    assert_contains(&error, &["run `stuck` did not finish within 300ms"]);
    d.fails(1, &["runs", "resume", "nope"]).await;
    pool.try_stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_items_and_workers() {
    in_flight_items_and_workers_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_in_flight_items_and_workers() {
    in_flight_items_and_workers_on(Deployment::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_in_flight_items_and_workers() {
    in_flight_items_and_workers_on(Deployment::postgres().await).await;
}

async fn in_flight_items_and_workers_on(d: Deployment) {
    let _flags = FLAGS.lock().await;
    RELEASED.store(false, Ordering::SeqCst);
    assert_eq!(d.table(&["workers"]).await, "no workers\n");
    let mut pool = d.pool(1);
    let worker = pool.worker_ids()[0].to_string();
    d.start("busy", BLOCKING).await;
    eventually("the worker reports its item", || async {
        d.backend
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|h| h.status == WorkerStatus::InProgress && h.current_work_item_run_id.is_some())
    })
    .await;

    let show = d.table(&["runs", "show", "busy"]).await;
    assert_contains(
        &show,
        &[
            "status           running",
            "in_progress",
            &worker,
            " (in ",
            "99",
        ],
    );
    let details = d.json(&["runs", "show", "busy"]).await;
    let item = &details["items"][0];
    assert_eq!(item["status"], "in_progress");
    assert_eq!(item["worker"], worker.as_str());
    assert_eq!(item["deliveries"], 1);
    assert!(
        item["lease_deadline"].as_str().unwrap().ends_with('Z'),
        "{item}"
    );
    let item_id = item["item_id"].as_str().unwrap().to_owned();
    assert_eq!(details["progress"]["outstanding"], 1);

    let table = d.table(&["workers"]).await;
    assert_contains(
        &table,
        &[
            "WORKER",
            "LIVENESS",
            &worker,
            &std::process::id().to_string(),
            "in_progress",
            &format!("busy:{item_id}"),
            "alive",
        ],
    );
    let workers = d.json(&["workers"]).await;
    assert_eq!(workers[0]["worker_id"], worker.as_str());
    assert_eq!(workers[0]["pid"], std::process::id());
    assert_eq!(workers[0]["status"], "in_progress");
    assert_eq!(workers[0]["current_run_id"], "busy");
    assert_eq!(workers[0]["current_item_id"], item_id.as_str());
    assert_eq!(workers[0]["liveness"], "alive");
    assert!(workers[0]["host"].as_str().is_some_and(|h| !h.is_empty()));

    let stats = d.json(&["stats", "--interval", "0"]).await;
    assert_eq!(stats["total"]["in_flight"], 1);
    assert_eq!(stats["total"]["active_runs"], 1);
    assert_eq!(stats["workflows"][0]["workflow"], "Pipeline");

    RELEASED.store(true, Ordering::SeqCst);
    d.finished("busy").await;
    pool.try_stop().await.unwrap();
    let workers = d.json(&["workers"]).await;
    assert_eq!(workers[0]["status"], "stopped");
    assert_eq!(workers[0]["liveness"], "stopped");
    assert_eq!(workers[0]["current_item_id"], Value::Null);
    assert_contains(&d.table(&["workers"]).await, &["stopped"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_requeue_and_drop() {
    dead_letters_list_requeue_and_drop_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dead_letters_list_requeue_and_drop() {
    dead_letters_list_requeue_and_drop_on(Deployment::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letters_list_requeue_and_drop() {
    dead_letters_list_requeue_and_drop_on(Deployment::postgres().await).await;
}

async fn dead_letters_list_requeue_and_drop_on(d: Deployment) {
    let _flags = FLAGS.lock().await;
    FIXED.store(false, Ordering::SeqCst);
    assert_eq!(d.table(&["dlq", "list"]).await, "no dead letters\n");
    let mut pool = d.pool(2);
    for (run, input) in [("d1", 7), ("d2", 8), ("d3", 9), ("d4", 10)] {
        d.start(run, input).await;
        assert_eq!(d.finished(run).await.status, RunStatus::Failed);
    }

    let table = d.table(&["dlq", "list"]).await;
    assert_contains(
        &table,
        &["ID", "ERROR", "d1:", "d4:", "check", "item 7 is broken"],
    );
    let letters = d.json(&["dlq", "list"]).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 4);
    let id = |run: &str| -> String {
        let letter = letters.iter().find(|l| l["run_id"] == run).unwrap();
        assert_eq!(
            letter["id"].as_str().unwrap(),
            format!("{run}:{}", letter["item_id"].as_str().unwrap())
        );
        letter["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(letters[0]["node"], "check");
    assert_eq!(letters[0]["attempt"], 1);
    assert_eq!(letters[0]["payload"]["Check"][1], 7, "{letters:?}");

    let show = d.table(&["runs", "show", "d2"]).await;
    assert_contains(
        &show,
        &["status           failed", "errors: 1", "item 8 is broken"],
    );
    let details = d.json(&["runs", "show", "d2"]).await;
    assert_eq!(details["errors"][0]["node"], "check");
    assert_eq!(details["errors"][0]["handled"], false);
    assert_eq!(details["metrics"]["failed"], 1);

    let dropped = d.table(&["dlq", "drop", &id("d2")]).await;
    assert_eq!(dropped, format!("dropped {}\n", id("d2")));
    let dropped = d.json(&["dlq", "drop", &id("d3")]).await;
    assert_eq!(dropped, serde_json::json!({ "dropped": [id("d3")] }));
    let error = d.fails(1, &["dlq", "drop", &id("d2")]).await;
    assert_contains(&error, &["no dead letter for item"]);

    FIXED.store(true, Ordering::SeqCst);
    let requeued = d.table(&["dlq", "requeue", &id("d1")]).await;
    assert_eq!(requeued, format!("requeued {}\n", id("d1")));
    assert_eq!(d.finished("d1").await.status, RunStatus::Completed);
    let requeued = d.json(&["dlq", "requeue", "--all"]).await;
    assert_eq!(requeued, serde_json::json!({ "requeued": [id("d4")] }));
    assert_eq!(d.finished("d4").await.status, RunStatus::Completed);
    assert_eq!(d.json(&["dlq", "list"]).await, serde_json::json!([]));
    assert_eq!(
        d.table(&["dlq", "requeue", "--all"]).await,
        "nothing requeued\n"
    );

    d.fails(2, &["dlq", "requeue"]).await;
    d.fails(2, &["dlq", "requeue", "not-an-id"]).await;
    d.fails(2, &["dlq", "drop"]).await;
    pool.try_stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_queues_and_throughput() {
    stats_count_queues_and_throughput_on(Deployment::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stats_count_queues_and_throughput() {
    stats_count_queues_and_throughput_on(Deployment::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stats_count_queues_and_throughput() {
    stats_count_queues_and_throughput_on(Deployment::postgres().await).await;
}

async fn stats_count_queues_and_throughput_on(d: Deployment) {
    // A retry far in the future: one delayed item.
    let retrying = pipeline()
        .worker(d.backend.clone())
        .retry_policy(RetryPolicy::new(
            3,
            Duration::from_secs(600),
            Duration::from_secs(600),
            BackoffStrategy::Linear,
            RetryError::All,
        ))
        .build()
        .unwrap();
    d.start("retrying", DOOMED).await;
    retrying.run_once("cli-once").await.unwrap();
    for i in 0..3 {
        d.start(&format!("queued-{i}"), 20 + i).await;
    }

    let table = d.table(&["stats", "--interval", "0"]).await;
    assert_contains(
        &table,
        &[
            "WORKFLOW",
            "READY",
            "DELAYED",
            "IN FLIGHT",
            "Pipeline",
            "total",
            "throughput: not measured",
        ],
    );
    let stats = d.json(&["stats", "--interval", "0"]).await;
    let total = &stats["total"];
    assert_eq!(total["runs"], 4);
    assert_eq!(total["active_runs"], 4);
    assert_eq!(total["ready"], 3);
    assert_eq!(total["delayed"], 1);
    assert_eq!(total["in_flight"], 0);
    assert_eq!(total["dead_letters"], 0);
    assert_eq!(stats["steps_per_second"], Value::Null);
    assert_eq!(stats["workflows"][0]["workflow"], "Pipeline");
    assert_eq!(stats["workflows"][0]["ready"], 3);
    assert!(stats["server_time"].as_str().unwrap().ends_with('Z'));

    // Throughput while slow runs complete.
    let mut pool = d.pool(2);
    d.start("slow-a", SLOW).await;
    d.start("slow-b", SLOW).await;
    let stats = d.json(&["stats", "--interval", "0.5"]).await;
    let interval = stats["interval_secs"].as_f64().unwrap();
    assert!((0.4..5.0).contains(&interval), "{stats}");
    assert!(
        stats["steps_per_second"].as_f64().unwrap() >= 0.0,
        "{stats}"
    );
    for run in ["queued-0", "queued-1", "queued-2", "slow-a", "slow-b"] {
        d.finished(run).await;
    }
    let stats = d.json(&["stats", "--interval", "0"]).await;
    assert_eq!(stats["total"]["completed_steps"], 15);
    assert_eq!(stats["total"]["finished_last_minute"], 5);
    assert_eq!(stats["total"]["ready"], 0);
    let table = d.table(&["stats", "--interval", "0.2"]).await;
    assert_contains(&table, &["throughput: ", " steps/s over "]);
    pool.try_stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_settings_come_from_flags_or_environment() {
    let d = Deployment::with_partitions(3).await;
    for i in 0..6 {
        d.start(&format!("spread-{i}"), 30 + i).await;
    }
    // The variables, as a deployment's operators would set them.
    let mut command = floxide_command();
    command
        .args(["stats", "--interval", "0", "--json"])
        .env("FLOXIDE_REDIS_URL", &d.url)
        .env("FLOXIDE_REDIS_PREFIX", &d.prefix)
        .env("FLOXIDE_REDIS_PARTITIONS", "3");
    let out = run(command).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let stats: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stats["total"]["runs"], 6);
    assert_eq!(stats["total"]["ready"], 6);
    let runs = d.json(&["runs", "list", "--partitions", "3"]).await;
    assert_eq!(runs.as_array().unwrap().len(), 6);
    // Without the flag the tool uses the count the deployment recorded.
    let recorded = d.json(&["runs", "list"]).await;
    assert_eq!(recorded.as_array().unwrap().len(), 6, "{recorded}");
    // A wrong count is refused with a clear error (it would see only some runs).
    let wrong = d.floxide(&["runs", "list", "--partitions", "2"]).await;
    assert_eq!(wrong.code, Some(1));
    assert_contains(&wrong.stderr, &["uses 3 partition(s)", "configured with 2"]);

    let mut command = floxide_command();
    command.args(["runs", "list"]);
    let out = run(command).await;
    assert_eq!(out.code, Some(2));
    assert_contains(
        &out.stderr,
        &[
            "no backend URL: pass --backend URL (redis://… or postgres://…)",
            "FLOXIDE_BACKEND_URL",
            "--redis URL or FLOXIDE_REDIS_URL",
        ],
    );
    let mut command = floxide_command();
    command.args(["runs", "list", "--redis", "redis://127.0.0.1:1/"]);
    let out = run(command).await;
    assert_eq!(out.code, Some(1));
    assert_contains(
        &out.stderr,
        &["error: cannot connect to Redis at `redis://127.0.0.1:1/`"],
    );
}

/// Version 1 of a shop: its one node is called `old`.
mod shop_v1 {
    use floxide::*;
    node! {
        pub struct Pass {};
        input = u32;
        output = u32;
        |_ctx, n| { Ok(Transition::Next(n)) }
    }
    workflow! {
        pub struct Shop { old: Pass }
        start = old;
        edges { old => []; }
    }
}

/// Version 2 of the shop: the node was renamed `new`.
mod shop_v2 {
    use floxide::*;
    node! {
        pub struct Pass {};
        input = u32;
        output = u32;
        |_ctx, n| { Ok(Transition::Next(n)) }
    }
    workflow! {
        pub struct Shop { new: Pass }
        start = new;
        edges { new => []; }
    }
    workflow! {
        /// The same shop, renamed.
        pub struct Store { new: Pass }
        start = new;
        edges { new => []; }
    }
}

/// Issue 11, case 10: redeploys. An item queued for a node that a new version renamed gets a
/// typed error naming the node (not an undecodable-payload message), visible in `runs show`;
/// a run of a renamed workflow, which no live worker serves, is shown as stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploys_with_renamed_nodes_and_workflows_are_visible() {
    let d = Deployment::new().await;
    let v1 = shop_v1::Shop {
        old: shop_v1::Pass {},
    };
    let o = v1.orchestrator(d.backend.clone()).build().unwrap();
    let run = o
        .start_run_with_id(&WorkflowCtx::new(()), 7, "renamed-node")
        .await
        .unwrap();
    // Version 2 takes over the queue.
    let v2 = shop_v2::Shop {
        new: shop_v2::Pass {},
    };
    let worker = v2.worker(d.backend.clone()).build().unwrap();
    worker.run_once("v2").await.unwrap();
    let info = o.run_info(&run).await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let show = d.table(&["runs", "show", "renamed-node"]).await;
    assert_contains(
        &show,
        &[
            "work item of node `old`, which workflow `Shop` does not have (its nodes: new)",
            "deploy a version that still has `old`",
        ],
    );

    // The workflow renamed: its runs wait in a queue no live worker reads.
    let stuck = o
        .start_run_with_id(&WorkflowCtx::new(()), 8, "renamed-workflow")
        .await
        .unwrap();
    let renamed = shop_v2::Store {
        new: shop_v2::Pass {},
    };
    let mut pool = WorkerPool::new(renamed.worker(d.backend.clone()).build().unwrap(), 1);
    pool.start();
    // Once the worker reported, the run shows why it does not move.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let show = loop {
        let show = d.table(&["runs", "show", &stuck]).await;
        if show.contains("stalled") || std::time::Instant::now() > deadline {
            break show;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_contains(
        &show,
        &[
            "stalled",
            "no live worker serves workflow `Shop` (live workers serve: Store)",
        ],
    );
    let json = d.json(&["runs", "show", &stuck]).await;
    assert!(
        json["stalled"].as_str().unwrap().contains("`Shop`"),
        "{json}"
    );
    pool.try_stop().await.unwrap();
}

/// On PostgreSQL the tool checks the deployment's schema and creates nothing: a wrong schema
/// name is a clear error, not an empty deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_schema_is_an_error_and_creates_nothing() {
    let d = Deployment::postgres().await;
    let mut command = floxide_command();
    command.args([
        "runs",
        "list",
        "--backend",
        &d.url,
        "--schema",
        "nosuchschema",
    ]);
    let out = run(command).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_contains(
        &out.stderr,
        &[
            "schema `nosuchschema` is at version 0",
            "check the schema name",
        ],
    );
    let (client, connection) = tokio_postgres::connect(&d.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schemas: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'nosuchschema'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the tool created the schema");
    // An unknown scheme is refused by name.
    let mut command = floxide_command();
    command.args(["runs", "list", "--backend", "mysql://db/app"]);
    let out = run(command).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_contains(&out.stderr, &["unknown backend URL scheme `mysql`"]);
}
