//! `floxide runs …`: list, show, cancel, pause, resume and wait for runs.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use floxide_core::distributed::overview::RunProgress;
use floxide_core::distributed::{
    stall_of, DistributedError, NodeTiming, RunAction, RunInfo, RunMetrics, RunStatus,
    WorkItemInfo, WorkItemStatus, WorkflowError,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::commands::{stored, CliError, Session};
use crate::render::{duration, or_dash, rfc3339, shorten, timestamp_relative, Fields, Table};

/// Longest payload, output or context shown in a table (JSON has them whole).
const TEXT_WIDTH: usize = 60;

/// A run, for JSON.
#[derive(Debug, Serialize)]
struct RunView {
    run_id: String,
    workflow: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    /// Until it finished, or until now.
    duration_ms: u64,
    deadline: Option<String>,
    idempotency_key: Option<String>,
    output: Option<Value>,
    outputs: Vec<Value>,
    error: Option<String>,
}

impl RunView {
    fn new(info: &RunInfo, now: SystemTime) -> Self {
        RunView {
            run_id: info.run_id.clone(),
            workflow: info.workflow.clone(),
            status: info.status.to_string(),
            started_at: rfc3339(info.started_at),
            finished_at: info.finished_at.map(rfc3339),
            duration_ms: run_duration(info, now).as_millis() as u64,
            deadline: info.deadline.map(rfc3339),
            idempotency_key: info.idempotency_key.clone(),
            output: info.output.clone(),
            outputs: info.outputs.clone(),
            error: info.error.clone(),
        }
    }
}

/// How long a run took, or has been going.
fn run_duration(info: &RunInfo, now: SystemTime) -> Duration {
    info.finished_at
        .unwrap_or(now)
        .duration_since(info.started_at)
        .unwrap_or_default()
}

/// The output (or error) of a finished run, shortened for a table.
fn result_text(info: &RunInfo) -> String {
    match (&info.output, &info.error) {
        (Some(output), _) => shorten(&output.to_string(), TEXT_WIDTH),
        (None, Some(error)) => shorten(error, TEXT_WIDTH),
        (None, None) => "-".to_owned(),
    }
}

/// `floxide runs list`.
pub async fn list(
    s: &mut Session,
    status: Option<RunStatus>,
    workflow: Option<String>,
    limit: usize,
) -> Result<(), CliError> {
    let mut runs = s.backend.list_runs(status).await?;
    if let Some(workflow) = &workflow {
        runs.retain(|r| &r.workflow == workflow);
    }
    let found = runs.len();
    if limit > 0 {
        runs.truncate(limit);
    }
    let now = SystemTime::now();
    let views: Vec<RunView> = runs.iter().map(|r| RunView::new(r, now)).collect();
    s.print(&views, |_| {
        if runs.is_empty() {
            return "no runs\n".to_owned();
        }
        let mut table = Table::new(&["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "RESULT"]);
        for r in &runs {
            table.row(vec![
                r.run_id.clone(),
                r.workflow.clone(),
                r.status.to_string(),
                timestamp_relative(r.started_at, now),
                duration(run_duration(r, now)),
                result_text(r),
            ]);
        }
        let mut text = table.render();
        if found > runs.len() {
            text += &format!(
                "({} of {found} runs shown; --limit 0 shows all)\n",
                runs.len()
            );
        }
        text
    })
}

/// An item, for JSON.
#[derive(Debug, Serialize)]
struct ItemView {
    item_id: String,
    node: String,
    status: &'static str,
    attempt: u32,
    deliveries: u32,
    worker: Option<String>,
    /// When the worker's lease runs out unless renewed (server clock).
    lease_deadline: Option<String>,
    /// The stored item: JSON, or a text summary of bytes that are not.
    payload: Value,
}

/// A failure, for JSON.
#[derive(Debug, Serialize)]
struct ErrorView {
    at: String,
    item_id: String,
    node: String,
    attempt: u32,
    /// Routed to an `on_failure` edge: the run went on.
    handled: bool,
    error: String,
}

impl ErrorView {
    fn new(e: &WorkflowError) -> Self {
        ErrorView {
            at: rfc3339(e.timestamp),
            item_id: e.work_item.to_string(),
            node: e.node.clone(),
            attempt: e.attempt,
            handled: e.handled,
            error: e.error.clone(),
        }
    }
}

/// Timing of one node, for JSON.
#[derive(Debug, Serialize)]
struct NodeView {
    steps: u64,
    total_ms: f64,
    mean_ms: f64,
    max_ms: f64,
}

impl NodeView {
    fn new(t: &NodeTiming) -> Self {
        // Whole microseconds (as stored), so that the JSON shows no float noise.
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        NodeView {
            steps: t.count,
            total_ms: ms(t.total),
            mean_ms: ms(mean(t)),
            max_ms: ms(t.max),
        }
    }
}

fn mean(t: &NodeTiming) -> Duration {
    t.total
        .checked_div(t.count.max(1) as u32)
        .unwrap_or_default()
}

/// Counters of a run, for JSON.
#[derive(Debug, Serialize)]
struct MetricsView {
    total_work_items: u64,
    completed: u64,
    failed: u64,
    retries: u64,
    reclaimed: u64,
    per_node: BTreeMap<String, NodeView>,
}

impl MetricsView {
    fn new(m: &RunMetrics) -> Self {
        MetricsView {
            total_work_items: m.total_work_items,
            completed: m.completed,
            failed: m.failed,
            retries: m.retries,
            reclaimed: m.reclaimed,
            per_node: m
                .per_node
                .iter()
                .map(|(node, t)| (node.clone(), NodeView::new(t)))
                .collect(),
        }
    }
}

/// Everything about one run, for JSON.
#[derive(Debug, Serialize)]
struct RunDetails {
    run: RunView,
    progress: RunProgress,
    context: Value,
    context_version: u64,
    metrics: MetricsView,
    /// Pending and in-flight items (every item with `--all-items`).
    items: Vec<ItemView>,
    errors: Vec<ErrorView>,
    /// Why the run makes no progress, when no live worker serves its workflow.
    stalled: Option<String>,
}

/// Bytes as text when UTF-8, else a summary.
fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("<{} bytes, not UTF-8>", bytes.len()),
    }
}

fn item_status(status: WorkItemStatus) -> &'static str {
    match status {
        WorkItemStatus::Pending => "pending",
        WorkItemStatus::InProgress => "in_progress",
        WorkItemStatus::WaitingRetry => "waiting_retry",
        WorkItemStatus::Held => "held",
        WorkItemStatus::Completed => "completed",
        WorkItemStatus::PermanentlyFailed => "permanently_failed",
        WorkItemStatus::Cancelled => "cancelled",
    }
}

/// Items not finished: waiting, in flight, waiting for a retry, or held.
fn is_unfinished(item: &WorkItemInfo) -> bool {
    matches!(
        item.status,
        WorkItemStatus::Pending
            | WorkItemStatus::InProgress
            | WorkItemStatus::WaitingRetry
            | WorkItemStatus::Held
    )
}

/// `floxide runs show`.
pub async fn show(s: &mut Session, run_id: &str, all_items: bool) -> Result<(), CliError> {
    let b = &s.backend;
    let info = b.run_info(run_id).await?;
    let progress = b.progress(run_id).await?;
    let context = b.load_context(run_id).await?;
    let metrics = b.metrics(run_id).await?;
    let mut items = b.work_items(run_id).await?;
    let leases = b.lease_deadlines(run_id).await?;
    let errors = b.errors(run_id).await?;
    // A finished run's items are gone; the record counts every item the run had.
    let item_count = progress.total.max(items.len() as u64);
    if !all_items {
        items.retain(is_unfinished);
    }
    let now = SystemTime::now();
    // A worker reports every few seconds while it runs; a minute of silence is no worker.
    let stalled =
        stall_of(&info, &b.workers().await?, now, Duration::from_secs(60)).map(|e| e.to_string());
    let context_text = bytes_text(&context.bytes);
    let details = RunDetails {
        run: RunView::new(&info, now),
        progress,
        context: stored(&context_text),
        context_version: context.version,
        metrics: MetricsView::new(&metrics),
        items: items
            .iter()
            .map(|i| ItemView {
                item_id: i.item_id.to_string(),
                node: i.node.clone(),
                status: item_status(i.status),
                attempt: i.attempt,
                deliveries: i.deliveries,
                worker: i.worker.as_ref().map(|w| w.to_string()),
                lease_deadline: leases.get(&i.item_id).copied().map(rfc3339),
                payload: stored(&i.payload),
            })
            .collect(),
        errors: errors.iter().map(ErrorView::new).collect(),
        stalled: stalled.clone(),
    };
    s.print(&details, |_| {
        let mut fields = run_fields(&info, Some(progress), now);
        if let Some(stall) = &stalled {
            fields.add("stalled", stall.clone());
        }
        fields.add(
            "context",
            format!(
                "{} (version {})",
                shorten(&context_text, TEXT_WIDTH),
                context.version
            ),
        );
        let mut text = fields.render();

        text += &format!(
            "\nmetrics: {} items, {} steps completed, {} failed, {} retries, {} reclaimed\n",
            metrics.total_work_items,
            metrics.completed,
            metrics.failed,
            metrics.retries,
            metrics.reclaimed
        );
        if !metrics.per_node.is_empty() {
            let mut table = Table::new(&["NODE", "STEPS", "TOTAL", "MEAN", "MAX"]);
            for (node, t) in &metrics.per_node {
                table.row(vec![
                    node.clone(),
                    t.count.to_string(),
                    duration(t.total),
                    duration(mean(t)),
                    duration(t.max),
                ]);
            }
            text += &table.render();
        }

        text += &if item_count > 0 && items.is_empty() && info.status.is_finished() {
            format!("\nitems: {item_count} (not kept once the run finished)\n")
        } else if all_items {
            format!("\nitems: {item_count}\n")
        } else {
            format!(
                "\nitems: {} pending or in flight, of {item_count} (--all-items shows all)\n",
                items.len()
            )
        };
        if !items.is_empty() {
            let mut table = Table::new(&[
                "ITEM",
                "NODE",
                "STATUS",
                "ATTEMPT",
                "DELIVERIES",
                "WORKER",
                "LEASE DEADLINE",
                "PAYLOAD",
            ]);
            for i in &items {
                table.row(vec![
                    i.item_id.to_string(),
                    i.node.clone(),
                    item_status(i.status).to_owned(),
                    i.attempt.to_string(),
                    i.deliveries.to_string(),
                    or_dash(i.worker.as_ref().map(|w| w.to_string())),
                    or_dash(leases.get(&i.item_id).map(|t| timestamp_relative(*t, now))),
                    shorten(&i.payload, TEXT_WIDTH),
                ]);
            }
            text += &table.render();
        }

        if errors.is_empty() {
            text += "\nerrors: none\n";
        } else {
            text += &format!("\nerrors: {}\n", errors.len());
            let mut table = Table::new(&["AT", "ITEM", "NODE", "ATTEMPT", "HANDLED", "ERROR"]);
            for e in &errors {
                table.row(vec![
                    timestamp_relative(e.timestamp, now),
                    e.work_item.to_string(),
                    e.node.clone(),
                    e.attempt.to_string(),
                    if e.handled { "yes" } else { "no" }.to_owned(),
                    e.error.clone(),
                ]);
            }
            text += &table.render();
        }
        text
    })
}

/// The record of a run as label/value lines.
fn run_fields(info: &RunInfo, progress: Option<RunProgress>, now: SystemTime) -> Fields {
    let mut fields = Fields::default();
    fields.add("run", info.run_id.clone());
    fields.add("workflow", info.workflow.clone());
    fields.add("status", info.status.to_string());
    if let Some(p) = progress {
        fields.add(
            "progress",
            format!(
                "{} of {} items completed, {} outstanding",
                p.completed, p.total, p.outstanding
            ),
        );
    }
    fields.add("started", timestamp_relative(info.started_at, now));
    fields.add(
        "finished",
        or_dash(info.finished_at.map(|t| timestamp_relative(t, now))),
    );
    fields.add("duration", duration(run_duration(info, now)));
    fields.add(
        "deadline",
        or_dash(info.deadline.map(|t| timestamp_relative(t, now))),
    );
    fields.add("idempotency key", or_dash(info.idempotency_key.clone()));
    fields.add(
        "output",
        or_dash(
            info.output
                .as_ref()
                .map(|o| shorten(&o.to_string(), TEXT_WIDTH)),
        ),
    );
    if info.outputs.len() > 1 {
        fields.add("outputs", format!("{} (see --json)", info.outputs.len()));
    }
    fields.add("error", or_dash(info.error.clone()));
    fields
}

/// `floxide runs cancel|pause|resume`.
pub async fn control(s: &mut Session, run_id: &str, action: RunAction) -> Result<(), CliError> {
    let info = s.backend.control(run_id, action).await?;
    let view = RunView::new(&info, SystemTime::now());
    let verb = match action {
        RunAction::Cancel => "cancelled",
        RunAction::Pause => "paused",
        RunAction::Resume => "resumed",
    };
    s.print(&view, |v| {
        format!("run {} {verb}: it is now {}\n", v.run_id, v.status)
    })
}

/// `floxide runs wait`.
pub async fn wait(
    s: &mut Session,
    run_id: &str,
    timeout: Option<Duration>,
    poll: Duration,
    quiet: bool,
) -> Result<(), CliError> {
    let started = tokio::time::Instant::now();
    let mut display = ProgressDisplay::new(run_id, quiet, s.json());
    // Subscribe before reading, so that a change in between wakes the first wait.
    let mut watch = s.backend.watch_runs();
    let (info, progress) = loop {
        let info = s.backend.run_info(run_id).await?;
        let progress = s.backend.progress(run_id).await?;
        display.show(info.status, progress);
        if info.status.is_finished() {
            break (info, progress);
        }
        let waited = started.elapsed();
        let next = match timeout {
            Some(limit) if waited >= limit => {
                display.clear();
                return Err(DistributedError::WaitTimeout {
                    run_id: run_id.to_owned(),
                    waited: limit,
                }
                .into());
            }
            Some(limit) => poll.min(limit - waited),
            None => poll,
        };
        watch.changed(next).await;
    };
    display.clear();
    let now = SystemTime::now();
    s.print(&RunView::new(&info, now), |_| {
        run_fields(&info, Some(progress), now).render()
    })?;
    if info.status == RunStatus::Completed {
        Ok(())
    } else {
        Err(DistributedError::NoOutput {
            run_id: info.run_id,
            status: info.status,
            error: info.error,
        }
        .into())
    }
}

/// Progress of `runs wait` on stderr: a bar on a terminal, a line per change otherwise
/// (none with `--quiet`, nor with `--json` off a terminal).
enum ProgressDisplay {
    /// The bar starts ticking at the first progress, so that it never shows an empty run.
    Bar {
        bar: ProgressBar,
        ticking: bool,
    },
    Lines {
        run_id: String,
        last: Option<(RunStatus, RunProgress)>,
    },
    Silent,
}

impl ProgressDisplay {
    fn new(run_id: &str, quiet: bool, json: bool) -> Self {
        if quiet {
            return ProgressDisplay::Silent;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0).with_prefix(run_id.to_owned());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} items completed, {msg} ({elapsed})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            return ProgressDisplay::Bar {
                bar,
                ticking: false,
            };
        }
        if json {
            return ProgressDisplay::Silent;
        }
        ProgressDisplay::Lines {
            run_id: run_id.to_owned(),
            last: None,
        }
    }

    fn show(&mut self, status: RunStatus, progress: RunProgress) {
        match self {
            ProgressDisplay::Bar { bar, ticking } => {
                bar.set_length(progress.total);
                bar.set_position(progress.completed);
                bar.set_message(format!("{} outstanding, {status}", progress.outstanding));
                if !*ticking {
                    *ticking = true;
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
            }
            ProgressDisplay::Lines { run_id, last } => {
                if *last != Some((status, progress)) {
                    *last = Some((status, progress));
                    eprintln!(
                        "{run_id}: {}/{} items completed, {} outstanding, {status}",
                        progress.completed, progress.total, progress.outstanding
                    );
                }
            }
            ProgressDisplay::Silent => {}
        }
    }

    fn clear(&self) {
        if let ProgressDisplay::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}
