//! The order workflow and the demo shared by the backends' distributed examples
//! (`floxide-redis/examples/redis_distributed.rs`, `floxide-postgres/examples/postgres_distributed.rs`):
//! an orchestrator and N worker **processes** sharing one backend.
//!
//! How the worker processes are started: `std::env::current_exe()` runs again with the
//! environment variable `FLOXIDE_EXAMPLE_WORKER` set. Under `cargo test` the executable is the
//! test harness, so the test passes the arguments that select `tests::worker_entry`, which runs
//! the worker when the variable is set and does nothing otherwise.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floxide::*;
use serde::{Deserialize, Serialize};

const WORKER_ENV: &str = "FLOXIDE_EXAMPLE_WORKER";

/// An order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Its number.
    pub id: u32,
    /// Units ordered.
    pub quantity: u32,
}

/// The run's shared state: which process handled which step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Merge)]
pub struct Audit {
    /// `"<node> by <worker>"`, one per committed step.
    pub trail: EventLog<String>,
}

fn record(ctx: &Audit, node: &str) {
    let worker = floxide::current_step()
        .map(|s| s.worker.to_string())
        .unwrap_or_default();
    ctx.trail.append(format!("{node} by {worker}"));
}

node! {
    /// Checks the order.
    pub struct Validate {};
    context = Audit;
    input = Order;
    output = Order;
    |ctx, order| {
        record(ctx, "validate");
        if order.quantity == 0 {
            return Ok(Transition::Abort(FloxideError::Generic(format!("order {} is empty", order.id))));
        }
        Ok(Transition::Next(order))
    }
}

node! {
    /// Prices it (10 per unit).
    pub struct Price {};
    context = Audit;
    input = Order;
    output = (u32, u32);
    |ctx, order| {
        tokio::time::sleep(Duration::from_millis(20)).await;
        record(ctx, "price");
        Ok(Transition::Next((order.id, order.quantity * 10)))
    }
}

node! {
    /// Writes the invoice line.
    pub struct Invoice {};
    context = Audit;
    input = (u32, u32);
    output = String;
    |ctx, (id, total)| {
        record(ctx, "invoice");
        Ok(Transition::Next(format!("order {id}: {total} EUR")))
    }
}

workflow! {
    /// validate → price → invoice.
    pub struct Orders { validate: Validate, price: Price, invoice: Invoice }
    context = Audit;
    start = validate;
    edges { validate => [price]; price => [invoice]; invoice => []; }
}

pub fn orders() -> Orders {
    Orders {
        validate: Validate {},
        price: Price {},
        invoice: Invoice {},
    }
}

/// The worker process: a pool of workers until SIGTERM, configured by the `FLOXIDE_*`
/// environment variables (the command line belongs to the test harness under `cargo test`),
/// on the backend `connect` makes of the URL and `FLOXIDE_EXAMPLE_NAMESPACE`.
pub async fn worker_main<B, F, Fut>(connect: F) -> std::process::ExitCode
where
    B: distributed::Backend,
    F: FnOnce(String, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<B, FloxideError>> + Send,
{
    let args = match WorkerArgs::parse(Vec::<String>::new(), |k| std::env::var(k).ok()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    run_worker(args, |args| async move {
        let namespace = std::env::var(NAMESPACE_ENV).unwrap_or_default();
        let backend = connect(args.backend_url()?.to_owned(), namespace).await?;
        orders()
            .worker(backend)
            .lease_timeout(Duration::from_secs(5))
            .build()
    })
    .await
}

/// Where the worker processes find the deployment's key prefix or schema.
const NAMESPACE_ENV: &str = "FLOXIDE_EXAMPLE_NAMESPACE";

/// Stops (SIGTERM) and reaps the worker processes, whatever happens.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `workers` worker processes and `runs` runs, waits for them, returns the invoices.
/// `backend` is the deployment at `url` under `namespace` (a Redis key prefix, a PostgreSQL
/// schema), emptied by the caller.
pub async fn demo(
    backend: impl distributed::Backend,
    url: &str,
    namespace: &str,
    workers: usize,
    runs: u32,
    harness_args: &[&str],
) -> Result<Vec<String>, FloxideError> {
    let exe = std::env::current_exe().map_err(|e| FloxideError::Generic(e.to_string()))?;
    let mut children = Workers(Vec::new());
    for i in 0..workers {
        let child = Command::new(&exe)
            .args(harness_args)
            .env(WORKER_ENV, "1")
            .env("FLOXIDE_BACKEND_URL", url)
            .env(NAMESPACE_ENV, namespace)
            .env("FLOXIDE_CONCURRENCY", "2")
            .env("FLOXIDE_WORKER_NAME", format!("proc{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| FloxideError::Generic(format!("cannot start a worker process: {e}")))?;
        children.0.push(child);
    }
    let orchestrator = orders().orchestrator(backend).build()?;
    let mut ids = Vec::new();
    for id in 1..=runs {
        let order = Order {
            id,
            quantity: id % 5,
        };
        ids.push(
            orchestrator
                .start_run(&WorkflowCtx::new(Audit::default()), order)
                .await?,
        );
    }
    println!("started {runs} runs on {workers} worker processes");
    let started = Instant::now();
    loop {
        let done = orchestrator
            .list_runs(None)
            .await?
            .iter()
            .filter(|r| r.status.is_finished())
            .count();
        println!("  {done}/{runs} finished after {:?}", started.elapsed());
        if done == ids.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(FloxideError::Generic(format!(
                "only {done} of {runs} runs finished within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut invoices = Vec::new();
    for id in &ids {
        let info = orchestrator.run_info(id).await?;
        match orchestrator
            .wait_for_output(id, Duration::from_secs(30))
            .await
        {
            Ok(invoice) => {
                let trail: Vec<String> = orchestrator.context(id).await?.trail.events().collect();
                println!("{invoice}  [{}]", trail.join(", "));
                invoices.push(invoice);
            }
            Err(e) => println!("run {id}: {:?} ({e})", info.status),
        }
    }
    for health in orchestrator.liveness().await? {
        println!(
            "worker {} (pid {}): {:?}",
            health.worker_id, health.pid, health.status
        );
    }
    Ok(invoices)
}

/// The value after `name` on the command line, or `default`.
pub fn flag(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether this process is one of the demo's worker processes.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// Prints the demo's result; the process's exit code.
pub fn report(result: Result<Vec<String>, FloxideError>) -> std::process::ExitCode {
    match result {
        Ok(invoices) => {
            println!("{} invoices", invoices.len());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The test harness's entry for a worker process (see the module's doc).
#[cfg(test)]
pub fn worker_entry(main: impl Future<Output = std::process::ExitCode>) {
    if is_worker() {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let code = runtime.block_on(main);
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
}

/// The arguments that make the test harness run only `tests::worker_entry`.
#[cfg(test)]
pub const HARNESS: [&str; 4] = [
    "tests::worker_entry",
    "--exact",
    "--nocapture",
    "--test-threads=1",
];

/// Checks the demo's invoices: orders with quantity 0 (ids 5 and 10) abort in validate; the 8
/// others are invoiced.
#[cfg(test)]
pub fn check_invoices(invoices: &[String]) {
    assert_eq!(invoices.len(), 8, "{invoices:?}");
    assert!(invoices.contains(&"order 3: 30 EUR".to_owned()));
}
