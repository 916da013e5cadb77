//! BENCH.md's `local-linear` on Floxide 3.2.2: three nodes `u64 -> n + 1`, `wf.run(&ctx, 0)`
//! called sequentially after 1,000 warm-up runs, on a multi-threaded Tokio runtime with one
//! worker thread per core (as `floxide-bench local-linear`). Prints one JSON line.
//!
//! `floxide-v3-local-linear [--runs N]` (default 100,000).

// (3.2.2's generated code calls `Node::process`, and keeps the closure body's braces.)
#![allow(unused_braces)]

use floxide::{node, workflow, Node, Transition, Workflow, WorkflowCtx};

// The same measurement as `floxide-bench local-linear`.
#[path = "../../src/local_linear.rs"]
mod local_linear;

node! {
    pub struct Inc {};
    context = ();
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Linear { a: Inc, b: Inc, c: Inc }
    start = a;
    edges { a => { [b] }; b => { [c] }; c => {}; }
}

fn runs_flag() -> Result<u64, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(100_000),
        [flag, n] if flag == "--runs" => n.parse().map_err(|e| format!("--runs {n}: {e}")),
        other => Err(format!("unexpected arguments {other:?}; usage: [--runs N]")),
    }
}

async fn local_linear(runs: u64) -> Result<serde_json::Value, String> {
    let wf = &Linear {
        a: Inc {},
        b: Inc {},
        c: Inc {},
    };
    let ctx = &WorkflowCtx::new(());
    local_linear::measure("floxide 3.2.2".to_owned(), runs, || async move {
        wf.run(ctx, 0).await.map_err(|e| e.to_string())
    })
    .await
}

fn main() {
    let result = runs_flag().and_then(|runs| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(local_linear(runs))
    });
    match result {
        Ok(line) => println!("{line}"),
        Err(error) => {
            eprintln!("floxide-v3-local-linear: {error}");
            std::process::exit(1);
        }
    }
}
