//! A workflow graph as SVG, from its [`layout`](crate::layout): a box per node with its name
//! and input → output types, the end of the run as a circle, arms labelled with their
//! patterns, `on_failure` edges dashed red, edges that close a cycle dotted.

use std::collections::BTreeMap;
use std::fmt::Write;

use floxide_core::{EdgeKind, WorkflowGraph};

use crate::layout::{layout, Layout, END, NODE_HEIGHT, NODE_WIDTH};

/// What one node's items of a run are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStates {
    /// Steps committed.
    pub done: u64,
    /// Items leased by a worker now.
    pub in_flight: u64,
    /// Items waiting for a worker (or held while the run is paused).
    pub waiting: u64,
    /// Items that failed and wait for their retry.
    pub retrying: u64,
    /// Items dead-lettered.
    pub dead: u64,
}

impl NodeStates {
    /// The colour of the node's box: the most pressing state wins.
    fn fill(&self) -> &'static str {
        if self.dead > 0 {
            "#f8d7da"
        } else if self.retrying > 0 {
            "#ffe5b4"
        } else if self.in_flight > 0 {
            "#d6e9ff"
        } else if self.waiting > 0 {
            "#fff3cd"
        } else if self.done > 0 {
            "#d4edda"
        } else {
            "#f4f6fb"
        }
    }

    /// "2 done · 1 in flight", or `None` when nothing happened there.
    fn summary(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.done, "done"),
            (self.in_flight, "in flight"),
            (self.waiting, "waiting"),
            (self.retrying, "retrying"),
            (self.dead, "dead"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join(" · "))
    }
}

/// The SVG document of `graph`.
pub fn render(graph: &WorkflowGraph) -> String {
    render_run(graph, &BTreeMap::new())
}

/// The SVG document of `graph` with each node coloured by what its items of one run are
/// doing (`states`, by node name), and their counts under its types.
pub fn render_run(graph: &WorkflowGraph, states: &BTreeMap<String, NodeStates>) -> String {
    let laid = layout(graph);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="12">"#,
        w = laid.width,
        h = laid.height
    );
    out.push_str(concat!(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" "##,
        r##"markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>"##,
        r#"</marker></defs>"#
    ));
    let _ = write!(out, "<title>{}</title>", escape(&graph.workflow));
    edges(&mut out, &laid);
    for placed in &laid.nodes {
        if placed.name == END {
            let _ = write!(
                out,
                r##"<g class="node end"><circle cx="{:.1}" cy="{:.1}" r="16" fill="#fff" stroke="#333" stroke-width="2"/><text x="{:.1}" y="{:.1}" text-anchor="middle">end</text></g>"##,
                placed.x,
                placed.y,
                placed.x,
                placed.y + 4.0
            );
            continue;
        }
        let Some(node) = graph.nodes.iter().find(|n| n.name == placed.name) else {
            continue;
        };
        let (left, top) = (placed.x - NODE_WIDTH / 2.0, placed.y - NODE_HEIGHT / 2.0);
        let stroke = if node.name == graph.start { 3 } else { 1 };
        let state = states.get(&node.name).copied().unwrap_or_default();
        let fill = state.fill();
        let types = format!("{} → {}", short(&node.input), short(&node.output));
        let _ = write!(
            out,
            r##"<g class="node" data-node="{name}"><rect x="{left:.1}" y="{top:.1}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" fill="{fill}" stroke="#333" stroke-width="{stroke}"/>"##,
            name = escape(&node.name),
        );
        if node.retried {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" rx="8" fill="none" stroke="#333"/>"##,
                left - 3.0,
                top - 3.0,
                NODE_WIDTH + 6.0,
                NODE_HEIGHT + 6.0
            );
        }
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{y1:.1}" text-anchor="middle" font-weight="bold">{name}</text><text x="{x:.1}" y="{y2:.1}" text-anchor="middle" fill="#555" font-size="11">{types}</text>"##,
            x = placed.x,
            y1 = placed.y - 8.0,
            y2 = placed.y + 7.0,
            name = escape(&clip(&node.name, 24)),
            types = escape(&clip(&types, 30)),
        );
        if let Some(summary) = state.summary() {
            let _ = write!(
                out,
                r##"<text class="states" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
                placed.x,
                placed.y + 21.0,
                escape(&summary)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}

/// The edges, under the nodes.
fn edges(out: &mut String, laid: &Layout) {
    for edge in &laid.edges {
        let Some((&first, rest)) = edge.points.split_first() else {
            continue;
        };
        let Some(&last) = rest.last() else { continue };
        // From the source box's border to the target's (the end's circle is smaller).
        let down = last.1 >= first.1;
        let leave = if down {
            NODE_HEIGHT / 2.0
        } else {
            -NODE_HEIGHT / 2.0
        };
        let arrive = match (edge.to == END, down) {
            (true, _) => 16.0,
            (false, true) => NODE_HEIGHT / 2.0,
            (false, false) => -NODE_HEIGHT / 2.0,
        };
        let mut points = vec![(first.0, first.1 + leave)];
        points.extend(rest[..rest.len() - 1].iter().copied());
        points.push((last.0, last.1 - arrive));
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let style = match (&edge.kind, edge.back) {
            (EdgeKind::OnFailure, _) => r##"stroke="#c0392b" stroke-dasharray="6,4""##,
            (_, true) => r##"stroke="#555" stroke-dasharray="2,3""##,
            _ => r##"stroke="#555""##,
        };
        let _ = write!(
            out,
            r#"<polyline class="edge" data-from="{}" data-to="{}" points="{}" fill="none" {style} stroke-width="1.5" marker-end="url(#arrow)"/>"#,
            escape(&edge.from),
            escape(&edge.to),
            path.join(" ")
        );
        let label = match &edge.kind {
            EdgeKind::Arm { pattern } => Some(pattern.as_str()),
            EdgeKind::Terminal { pattern } => pattern.as_deref(),
            EdgeKind::OnFailure => Some("on_failure"),
            _ => None,
        };
        if let Some(label) = label {
            // Beside the first segment, a third of the way down.
            let (a, b) = (points[0], points[1]);
            let (x, y) = (a.0 + (b.0 - a.0) / 3.0, a.1 + (b.1 - a.1) / 3.0);
            let _ = write!(
                out,
                r##"<text class="label" x="{:.1}" y="{y:.1}" fill="#1f4e8c" font-size="11">{}</text>"##,
                x + 6.0,
                escape(&clip(label, 36))
            );
        }
    }
}

/// A type name without its module path (`alloc::string::String` → `String`), generic
/// arguments included.
fn short(type_name: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    for c in type_name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(&word));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(&word));
    out
}

/// `text` cut to `max` characters, with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// `text` safe inside SVG text and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(short("alloc::string::String"), "String");
        assert_eq!(
            short("(u32, alloc::vec::Vec<my_app::Order>)"),
            "(u32, Vec<Order>)"
        );
    }

    #[test]
    fn the_svg_has_every_node_edge_and_label_escaped() {
        let graph = WorkflowGraph::new("Flow<&>", "a")
            .with_node("a", "A", "u32", "my::Choice", true)
            .with_node("b", "B", "u32", "alloc::string::String", false)
            .with_edge(
                "a",
                Some("b"),
                EdgeKind::Arm {
                    pattern: "Choice::Left(x) if x < 3".into(),
                },
            )
            .with_edge("a", Some("b"), EdgeKind::OnFailure)
            .with_edge("b", None, EdgeKind::Terminal { pattern: None });
        let svg = render(&graph);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="node""#).count(), 2);
        assert_eq!(svg.matches(r#"class="node end""#).count(), 1);
        assert_eq!(svg.matches(r#"class="edge""#).count(), 3);
        assert!(svg.contains("Choice::Left(x) if x &lt; 3"), "{svg}");
        assert!(svg.contains("<title>Flow&lt;&amp;&gt;</title>"));
        assert!(svg.contains("u32 → Choice") && svg.contains("u32 → String"));
        assert!(
            svg.contains("stroke-dasharray=\"6,4\""),
            "on_failure is dashed"
        );
        assert_eq!(svg, render(&graph), "deterministic");
    }

    #[test]
    fn a_run_colours_each_node_by_its_items() {
        let graph = WorkflowGraph::new("Flow", "a")
            .with_node("a", "A", "u32", "u32", false)
            .with_node("b", "B", "u32", "u32", false)
            .with_node("c", "C", "u32", "u32", false)
            .with_edge("a", Some("b"), EdgeKind::Direct)
            .with_edge("a", Some("c"), EdgeKind::Direct);
        let states = BTreeMap::from([
            (
                "a".to_owned(),
                NodeStates {
                    done: 1,
                    ..NodeStates::default()
                },
            ),
            (
                "b".to_owned(),
                NodeStates {
                    done: 2,
                    in_flight: 1,
                    ..NodeStates::default()
                },
            ),
            (
                "c".to_owned(),
                NodeStates {
                    dead: 1,
                    waiting: 3,
                    ..NodeStates::default()
                },
            ),
        ]);
        let svg = render_run(&graph, &states);
        let node = |name: &str| {
            let at = svg.find(&format!(r#"data-node="{name}""#)).unwrap();
            svg[at..at + svg[at..].find("</g>").unwrap()].to_owned()
        };
        assert!(node("a").contains("#d4edda") && node("a").contains("1 done"));
        assert!(node("b").contains("#d6e9ff") && node("b").contains("2 done · 1 in flight"));
        assert!(node("c").contains("#f8d7da") && node("c").contains("3 waiting · 1 dead"));
    }
}
