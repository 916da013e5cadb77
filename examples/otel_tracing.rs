//! OpenTelemetry: every step a distributed worker executes is a `floxide.step` tracing span
//! (with the run, node, item, attempt and worker as fields); `tracing-opentelemetry` turns
//! those spans into OpenTelemetry spans. Here they are printed on stdout, so no collector is
//! needed; to send them to one, swap the stdout exporter for `opentelemetry-otlp`'s.
//!
//! Run with `cargo run --example otel_tracing --features otel`.

use std::time::Duration;

use floxide::*;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

node! {
    pub struct Double {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n * 2)) }
}

workflow! {
    pub struct Quadruple { first: Double, second: Double }
    start = first;
    edges { first => [second]; second => []; }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Spans go to the exporter as they end (a batch processor suits production better).
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .with_resource(
            Resource::builder()
                .with_service_name("quadruple-worker")
                .build(),
        )
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("floxide-example"));
    // `floxide.step` is a debug-level span of the `floxide_core` crate.
    let steps = Targets::new().with_target("floxide_core", LevelFilter::DEBUG);
    tracing_subscriber::registry()
        .with(otel.with_filter(steps))
        .try_init()?;

    let wf = Quadruple {
        first: Double {},
        second: Double {},
    };
    let backend = InMemoryBackend::new();
    let orchestrator = wf.orchestrator(backend.clone()).build()?;
    let mut pool = WorkerPool::new(wf.worker(backend).build()?, 2);
    pool.start();
    let run = orchestrator.start_run(&WorkflowCtx::new(()), 5).await?;
    let output = orchestrator
        .wait_for_output(&run, Duration::from_secs(10))
        .await?;
    pool.try_stop().await?;
    // Flushes the spans still held by the pipeline.
    provider.shutdown()?;
    println!("run {run}: 5 * 4 = {output}");
    assert_eq!(output, 20);
    Ok(())
}
