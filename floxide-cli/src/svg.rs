//! A workflow graph as SVG, from its [`layout`](crate::layout): a box per node with its name
//! and input → output types, the end of the run as a circle, arms labelled with their
//! patterns, `on_failure` edges dashed red, edges that close a cycle dotted.

use std::fmt::Write;

use floxide_core::{EdgeKind, WorkflowGraph};

use crate::layout::{layout, Layout, END, NODE_HEIGHT, NODE_WIDTH};

/// The SVG document of `graph`.
pub fn render(graph: &WorkflowGraph) -> String {
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
        let types = format!("{} → {}", short(&node.input), short(&node.output));
        let _ = write!(
            out,
            r##"<g class="node" data-node="{name}"><rect x="{left:.1}" y="{top:.1}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" fill="#f4f6fb" stroke="#333" stroke-width="{stroke}"/>"##,
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
            r##"<text x="{x:.1}" y="{y1:.1}" text-anchor="middle" font-weight="bold">{name}</text><text x="{x:.1}" y="{y2:.1}" text-anchor="middle" fill="#555" font-size="11">{types}</text></g>"##,
            x = placed.x,
            y1 = placed.y - 4.0,
            y2 = placed.y + 13.0,
            name = escape(&clip(&node.name, 24)),
            types = escape(&clip(&types, 30)),
        );
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
}
