//! `floxide graphs …`: the workflow graphs that workers and orchestrators registered, as a
//! list, as text, or drawn as SVG.

use std::time::SystemTime;

use floxide_core::{EdgeKind, RegisteredGraph};

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
