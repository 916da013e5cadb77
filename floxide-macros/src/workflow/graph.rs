//! The workflow's graph as Graphviz DOT and Mermaid text, built at compile time.
//!
//! Output depends only on the macro input (declaration order, token text), so the same
//! source always yields the same text.

use quote::ToTokens;

use super::ast::{EdgeBody, WorkflowDef};

/// One labelled edge of the graph.
pub(super) struct Edge {
    /// The source node.
    pub(super) from: String,
    /// The successor; `None` for a terminal edge.
    pub(super) to: Option<String>,
    /// The arm's pattern (with its guard), or `on_failure`.
    pub(super) label: Option<String>,
    /// An `on_failure` edge.
    pub(super) failure: bool,
}

/// Every edge, in declaration order.
pub(super) fn edges(def: &WorkflowDef) -> Vec<Edge> {
    let mut out = Vec::new();
    for entry in &def.edges {
        let from = entry.source.to_string();
        let failure = entry.on_failure.is_some();
        match &entry.body {
            EdgeBody::Direct(targets) if targets.is_empty() => out.push(Edge {
                from,
                to: None,
                label: None,
                failure,
            }),
            EdgeBody::Direct(targets) => out.extend(targets.iter().map(|t| Edge {
                from: from.clone(),
                to: Some(t.to_string()),
                label: failure.then(|| "on_failure".to_owned()),
                failure,
            })),
            EdgeBody::Arms(arms) => {
                for arm in arms {
                    let mut label = tidy(&arm.pat.to_token_stream().to_string());
                    if let Some(guard) = &arm.guard {
                        label =
                            format!("{label} if {}", tidy(&guard.to_token_stream().to_string()));
                    }
                    if arm.targets.is_empty() {
                        out.push(Edge {
                            from: from.clone(),
                            to: None,
                            label: Some(label.clone()),
                            failure,
                        });
                    }
                    out.extend(arm.targets.iter().map(|t| Edge {
                        from: from.clone(),
                        to: Some(t.to_string()),
                        label: Some(label.clone()),
                        failure,
                    }));
                }
            }
        }
    }
    out
}

/// Token text with the spaces `to_string` puts around paths and parentheses removed.
fn tidy(text: &str) -> String {
    let mut s = text.to_owned();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" (", "("),
        ("( ", "("),
        (" )", ")"),
        (" ,", ","),
        (" {", " {"),
        ("& ", "&"),
    ] {
        s = s.replace(from, to);
    }
    s
}

/// A type as written, with the spaces of token text removed.
pub(super) fn type_text(ty: &syn::Type) -> String {
    tidy(&ty.to_token_stream().to_string())
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace("< ", "<")
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT text.
pub fn dot(def: &WorkflowDef) -> String {
    let start = def.start.as_ref().map(|(_, s)| s.to_string());
    let mut out = format!(
        "digraph {} {{\n    rankdir=TB;\n    node [shape=box];\n",
        def.ident
    );
    for node in def.nodes() {
        let name = node.ident.to_string();
        let mut attrs = format!(
            "label=\"{}\\n{}\"",
            dot_escape(&name),
            dot_escape(&type_text(&node.ty))
        );
        if start.as_deref() == Some(name.as_str()) {
            attrs.push_str(", style=bold");
        }
        if node.retry.is_some() {
            attrs.push_str(", peripheries=2");
        }
        out.push_str(&format!("    {name} [{attrs}];\n"));
    }
    let edges = edges(def);
    if edges.iter().any(|e| e.to.is_none()) {
        out.push_str("    __end [label=\"end\", shape=doublecircle];\n");
    }
    for e in &edges {
        let to = e.to.as_deref().unwrap_or("__end");
        let mut attrs = Vec::new();
        if let Some(label) = &e.label {
            attrs.push(format!("label=\"{}\"", dot_escape(label)));
        }
        if e.failure {
            attrs.push("style=dashed, color=red".to_owned());
        }
        if attrs.is_empty() {
            out.push_str(&format!("    {} -> {to};\n", e.from));
        } else {
            out.push_str(&format!("    {} -> {to} [{}];\n", e.from, attrs.join(", ")));
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart text.
pub fn mermaid(def: &WorkflowDef) -> String {
    let mut out = String::from("flowchart TD\n");
    for node in def.nodes() {
        out.push_str(&format!(
            "    {0}[\"{0}: {1}\"]\n",
            node.ident,
            mermaid_escape(&type_text(&node.ty))
        ));
    }
    let edges = edges(def);
    if edges.iter().any(|e| e.to.is_none()) {
        out.push_str("    __end((end))\n");
    }
    for e in &edges {
        let to = e.to.as_deref().unwrap_or("__end");
        let arrow = if e.failure { "-.->" } else { "-->" };
        match &e.label {
            Some(label) => out.push_str(&format!(
                "    {} {arrow}|\"{}\"| {to}\n",
                e.from,
                mermaid_escape(label)
            )),
            None => out.push_str(&format!("    {} {arrow} {to}\n", e.from)),
        }
    }
    out
}
