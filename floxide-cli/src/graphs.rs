//! `floxide graphs …`: the workflow graphs that workers and orchestrators registered, as a
//! list, as text, or drawn as SVG.

use std::collections::BTreeMap;
use std::time::SystemTime;

use floxide_core::distributed::{Backend, DistributedError, WorkItemStatus};
use floxide_core::{EdgeKind, RegisteredGraph};

use crate::svg::NodeStates;

use crate::commands::{CliError, Session};
use crate::render::{timestamp_relative, Table};

/// `floxide graphs list`: every registered version, the most recently first seen first.
pub async fn list(s: &mut Session) -> Result<(), CliError> {
    let graphs = s.backend.graphs().await?;
    let now = SystemTime::now();
    s.print(&graphs, |graphs| {
        if graphs.is_empty() {
            return "no registered graphs (workers and orchestrators register theirs when they \
                    start)\n"
                .to_owned();
        }
        let mut table = Table::new(&[
            "WORKFLOW",
            "HASH",
            "NODES",
            "EDGES",
            "FIRST SEEN",
            "LAST SEEN",
        ]);
        for g in graphs {
            table.row(vec![
                g.graph.workflow.clone(),
                g.hash.clone(),
                g.graph.nodes.len().to_string(),
                g.graph.edges.len().to_string(),
                timestamp_relative(g.first_seen, now),
                timestamp_relative(g.last_seen, now),
            ]);
        }
        table.render()
    })
}

/// `floxide graphs show WORKFLOW [--hash H] [--svg]`: one version (by default the most
/// recently first seen) as text, JSON or SVG.
pub async fn show(
    s: &mut Session,
    workflow: &str,
    hash: Option<&str>,
    svg: bool,
) -> Result<(), CliError> {
    let graphs = s.backend.graphs().await?;
    let versions: Vec<&RegisteredGraph> = graphs
        .iter()
        .filter(|g| g.graph.workflow == workflow)
        .collect();
    let chosen = match hash {
        Some(hash) => versions.iter().find(|g| g.hash.starts_with(hash)),
        None => versions.first(),
    };
    let Some(chosen) = chosen else {
        let known: Vec<String> = versions.iter().map(|g| g.hash.clone()).collect();
        return Err(CliError::UnknownGraph {
            workflow: workflow.to_owned(),
            hash: hash.map(str::to_owned),
            known,
        });
    };
    if svg {
        s.write_raw(&crate::svg::render(&chosen.graph))?;
        return Ok(());
    }
    s.print(*chosen, |g| {
        let mut out = format!(
            "{} ({}), start {}\n\nNODES\n",
            g.graph.workflow, g.hash, g.graph.start
        );
        let mut table = Table::new(&["NODE", "TYPE", "INPUT", "OUTPUT", "RETRY"]);
        for n in &g.graph.nodes {
            table.row(vec![
                n.name.clone(),
                n.node_type.clone(),
                n.input.clone(),
                n.output.clone(),
                if n.retried { "yes" } else { "-" }.to_owned(),
            ]);
        }
        out.push_str(&table.render());
        out.push_str("\nEDGES\n");
        let mut table = Table::new(&["FROM", "TO", "KIND"]);
        for e in &g.graph.edges {
            let kind = match &e.kind {
                EdgeKind::Direct => "direct".to_owned(),
                EdgeKind::Arm { pattern } => format!("arm {pattern}"),
                EdgeKind::OnFailure => "on_failure".to_owned(),
                EdgeKind::Terminal { pattern: None } => "terminal".to_owned(),
                EdgeKind::Terminal {
                    pattern: Some(pattern),
                } => format!("terminal arm {pattern}"),
                _ => "other".to_owned(),
            };
            table.row(vec![
                e.from.clone(),
                e.to.clone().unwrap_or_else(|| "(end)".to_owned()),
                kind,
            ]);
        }
        out.push_str(&table.render());
        out
    })
}

/// `floxide runs show RUN --svg`: the run drawn as its workflow's graph, each node coloured
/// by what its items are doing.
pub async fn draw_run(s: &mut Session, run_id: &str) -> Result<(), CliError> {
    match run_svg(&*s.backend, run_id).await? {
        Ok(svg) => s.write_raw(&svg),
        Err(workflow) => Err(CliError::UnknownGraph {
            workflow,
            hash: None,
            known: Vec::new(),
        }),
    }
}

/// Run `run_id` drawn as its workflow's graph (the version registered most recently before
/// the run started, else the newest), each node coloured by what its items are doing; the
/// workflow's name when it has no registered graph.
///
/// # Errors
/// [`DistributedError::UnknownRun`] and backend errors.
pub async fn run_svg(
    backend: &dyn Backend,
    run_id: &str,
) -> Result<Result<String, String>, DistributedError> {
    let info = backend.run_info(run_id).await?;
    let metrics = backend.metrics(run_id).await?;
    let items = backend.work_items(run_id).await?;
    let graphs = backend.graphs().await?;
    let versions: Vec<&RegisteredGraph> = graphs
        .iter()
        .filter(|g| g.graph.workflow == info.workflow)
        .collect();
    let chosen = versions
        .iter()
        .find(|g| g.first_seen <= info.started_at)
        .or(versions.first());
    let Some(chosen) = chosen else {
        return Ok(Err(info.workflow));
    };
    // A finished run's items are gone: its committed steps are in its metrics.
    let mut states: BTreeMap<String, NodeStates> = metrics
        .per_node
        .iter()
        .map(|(node, timing)| {
            let done = NodeStates {
                done: timing.count,
                ..NodeStates::default()
            };
            (node.clone(), done)
        })
        .collect();
    for item in &items {
        let state = states.entry(item.node.clone()).or_default();
        match item.status {
            WorkItemStatus::InProgress => state.in_flight += 1,
            WorkItemStatus::Pending | WorkItemStatus::Held => state.waiting += 1,
            WorkItemStatus::WaitingRetry => state.retrying += 1,
            WorkItemStatus::PermanentlyFailed => state.dead += 1,
            WorkItemStatus::Completed | WorkItemStatus::Cancelled => {}
        }
    }
    Ok(Ok(crate::svg::render_run(&chosen.graph, &states)))
}
