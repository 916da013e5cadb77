//! A deterministic layered ("Sugiyama-style") layout of a workflow graph, top to bottom:
//!
//! 1. **layers**: each node goes one layer below the deepest of its predecessors, walking
//!    from the start node; edges that close a cycle (found by a depth-first walk in
//!    declaration order) are left out of that, and drawn back upwards;
//! 2. **dummies**: an edge spanning several layers gets a point per layer in between, so
//!    that it can be routed around the nodes;
//! 3. **order**: within a layer, nodes start in first-seen order and are then sorted by the
//!    mean position of their neighbours (barycenters), sweeping down and up a few times and
//!    keeping the order with the fewest crossings;
//! 4. **coordinates**: each layer is centred; rows are a fixed height apart, columns a fixed
//!    width.
//!
//! Every step depends only on the graph (declaration order breaks ties), so the same graph is
//! always drawn the same way.

use std::collections::{BTreeMap, HashMap};

use floxide_core::{EdgeKind, WorkflowGraph};

/// Width of a node's box.
pub const NODE_WIDTH: f64 = 180.0;
/// Height of a node's box.
pub const NODE_HEIGHT: f64 = 52.0;
/// Horizontal distance between the centres of neighbouring columns.
const COLUMN: f64 = 210.0;
/// Vertical distance between the centres of neighbouring layers.
const ROW: f64 = 110.0;
/// Space around the drawing.
const MARGIN: f64 = 40.0;
/// Barycenter sweeps (each down then up).
const SWEEPS: usize = 8;

/// The name of the pseudo-node terminal edges lead to.
pub const END: &str = "end";

/// A placed node (its centre).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The node's name ([`END`] for the end of the run).
    pub name: String,
    /// Its layer (0 is the top).
    pub layer: usize,
    /// The centre's x.
    pub x: f64,
    /// The centre's y.
    pub y: f64,
}

/// A routed edge: the points from the source's centre to the target's, through the layers
/// in between.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The source node.
    pub from: String,
    /// The target node ([`END`] for a terminal edge).
    pub to: String,
    /// How the edge is taken.
    pub kind: EdgeKind,
    /// The polyline.
    pub points: Vec<(f64, f64)>,
    /// Whether it closes a cycle (drawn upwards).
    pub back: bool,
}

/// A laid-out graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The nodes, in declaration order (then [`END`], when a terminal edge exists).
    pub nodes: Vec<Placed>,
    /// The edges, in declaration order.
    pub edges: Vec<Routed>,
    /// The drawing's width.
    pub width: f64,
    /// The drawing's height.
    pub height: f64,
    /// Edge crossings between neighbouring layers in the chosen order.
    pub crossings: usize,
}

/// One entry of a layer: a node, or a point of a long edge (its edge index and layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    Node(usize),
    Bend(usize, usize),
}

/// Lays `graph` out.
pub fn layout(graph: &WorkflowGraph) -> Layout {
    // Node indices: the declared nodes, then the end.
    let mut names: Vec<String> = graph.nodes.iter().map(|n| n.name.clone()).collect();
    let has_end = graph.edges.iter().any(|e| e.to.is_none());
    if has_end {
        names.push(END.to_owned());
    }
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .filter_map(|e| {
            let from = *index.get(e.from.as_str())?;
            let to = *index.get(e.to.as_deref().unwrap_or(END))?;
            Some((from, to))
        })
        .collect();
    let kept: Vec<&floxide_core::GraphEdge> = graph
        .edges
        .iter()
        .filter(|e| {
            index.contains_key(e.from.as_str())
                && index.contains_key(e.to.as_deref().unwrap_or(END))
        })
        .collect();
    let start = index.get(graph.start.as_str()).copied().unwrap_or(0);
    let back = back_edges(names.len(), &edges, start);
    let layer = layers(names.len(), &edges, &back, has_end.then(|| names.len() - 1));

    // Layers with the points of long edges.
    let depth = layer.iter().copied().max().unwrap_or(0) + 1;
    let mut rows: Vec<Vec<Slot>> = vec![Vec::new(); depth];
    for (node, &l) in layer.iter().enumerate() {
        rows[l].push(Slot::Node(node));
    }
    let mut chains: Vec<Vec<Slot>> = Vec::with_capacity(edges.len());
    for (e, &(from, to)) in edges.iter().enumerate() {
        let (a, b) = (layer[from], layer[to]);
        let (top, bottom) = (a.min(b), a.max(b));
        let mut chain = vec![Slot::Node(from)];
        let between: Vec<usize> = if a <= b {
            (top + 1..bottom).collect()
        } else {
            (top + 1..bottom).rev().collect()
        };
        for l in between {
            rows[l].push(Slot::Bend(e, l));
            chain.push(Slot::Bend(e, l));
        }
        chain.push(Slot::Node(to));
        chains.push(chain);
    }
    // Links between neighbouring layers (upper slot, lower slot).
    let mut links: Vec<(Slot, Slot)> = Vec::new();
    for chain in &chains {
        for pair in chain.windows(2) {
            let (p, q) = (pair[0], pair[1]);
            let (lp, lq) = (slot_layer(p, &layer), slot_layer(q, &layer));
            if lp + 1 == lq {
                links.push((p, q));
            } else if lq + 1 == lp {
                links.push((q, p));
            }
        }
    }
    let rows = order(rows, &links, &layer);
    let crossings = count_crossings(&rows, &links, &layer);

    // Coordinates: layers centred on the widest one.
    let widest = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let width = (widest - 1) as f64 * COLUMN + NODE_WIDTH + 2.0 * MARGIN;
    let height = (depth - 1) as f64 * ROW + NODE_HEIGHT + 2.0 * MARGIN;
    let mut at: HashMap<Slot, (f64, f64)> = HashMap::new();
    for (l, row) in rows.iter().enumerate() {
        let offset = (widest - row.len()) as f64 * COLUMN / 2.0;
        for (i, slot) in row.iter().enumerate() {
            let x = MARGIN + NODE_WIDTH / 2.0 + offset + i as f64 * COLUMN;
            let y = MARGIN + NODE_HEIGHT / 2.0 + l as f64 * ROW;
            at.insert(*slot, (x, y));
        }
    }
    let nodes = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (x, y) = at[&Slot::Node(i)];
            Placed {
                name: name.clone(),
                layer: layer[i],
                x,
                y,
            }
        })
        .collect();
    let edges = kept
        .iter()
        .zip(&chains)
        .enumerate()
        .map(|(e, (edge, chain))| Routed {
            from: edge.from.clone(),
            to: edge.to.clone().unwrap_or_else(|| END.to_owned()),
            kind: edge.kind.clone(),
            points: chain.iter().map(|s| at[s]).collect(),
            back: back.contains(&e),
        })
        .collect();
    Layout {
        nodes,
        edges,
        width,
        height,
        crossings,
    }
}

fn slot_layer(slot: Slot, layer: &[usize]) -> usize {
    match slot {
        Slot::Node(n) => layer[n],
        Slot::Bend(_, l) => l,
    }
}

/// The edges (by index) that close a cycle: found by a depth-first walk from the start (then
/// from every node not reached), successors in declaration order.
fn back_edges(n: usize, edges: &[(usize, usize)], start: usize) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (e, &(from, _)) in edges.iter().enumerate() {
        out_edges[from].push(e);
    }
    let mut mark = vec![Mark::New; n];
    let mut back = Vec::new();
    let roots = std::iter::once(start).chain(0..n);
    for root in roots {
        if mark[root] != Mark::New {
            continue;
        }
        // An explicit stack of (node, next edge to look at).
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            match out_edges[node].get(*next).copied() {
                Some(e) => {
                    *next += 1;
                    let to = edges[e].1;
                    match mark[to] {
                        Mark::New => {
                            mark[to] = Mark::Open;
                            stack.push((to, 0));
                        }
                        Mark::Open => back.push(e),
                        Mark::Done => {}
                    }
                }
                None => {
                    mark[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
    back.sort_unstable();
    back
}

/// Each node's layer: the longest path to it over the forward edges; the end node, if any,
/// below every other.
fn layers(n: usize, edges: &[(usize, usize)], back: &[usize], end: Option<usize>) -> Vec<usize> {
    let forward: Vec<(usize, usize)> = edges
        .iter()
        .enumerate()
        .filter(|(e, _)| back.binary_search(e).is_err())
        .map(|(_, &edge)| edge)
        .collect();
    let mut indegree = vec![0usize; n];
    for &(_, to) in &forward {
        indegree[to] += 1;
    }
    let mut layer = vec![0usize; n];
    // Longest paths in topological (Kahn's) order; the result does not depend on the order
    // in which ready nodes are taken.
    let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
    while let Some(v) = ready.pop() {
        for &(from, to) in forward.iter().filter(|(from, _)| *from == v) {
            layer[to] = layer[to].max(layer[from] + 1);
            indegree[to] -= 1;
            if indegree[to] == 0 {
                ready.push(to);
            }
        }
    }
    if let Some(end) = end {
        let deepest = (0..n).filter(|&v| v != end).map(|v| layer[v]).max();
        layer[end] = deepest.map_or(0, |d| d + 1);
    }
    layer
}

/// Orders the slots of each layer: barycenter sweeps, keeping the order with the fewest
/// crossings (the first such, so the result is deterministic).
fn order(mut rows: Vec<Vec<Slot>>, links: &[(Slot, Slot)], layer: &[usize]) -> Vec<Vec<Slot>> {
    let mut best = rows.clone();
    let mut fewest = count_crossings(&rows, links, layer);
    for _ in 0..SWEEPS {
        for l in 1..rows.len() {
            sort_by_neighbours(&mut rows, l, links, true);
        }
        for l in (0..rows.len().saturating_sub(1)).rev() {
            sort_by_neighbours(&mut rows, l, links, false);
        }
        let crossings = count_crossings(&rows, links, layer);
        if crossings < fewest {
            fewest = crossings;
            best = rows.clone();
        }
        if fewest == 0 {
            break;
        }
    }
    best
}

/// Sorts layer `l` by the mean position of each slot's neighbours in the layer above (`down`)
/// or below; slots without neighbours there keep their place.
fn sort_by_neighbours(rows: &mut [Vec<Slot>], l: usize, links: &[(Slot, Slot)], down: bool) {
    let other = if down { l - 1 } else { l + 1 };
    let position: BTreeMap<Slot, usize> = rows[other]
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i))
        .collect();
    let mut keyed: Vec<(f64, usize, Slot)> = rows[l]
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let neighbours: Vec<usize> = links
                .iter()
                .filter_map(|&(upper, lower)| {
                    let (mine, theirs) = if down { (lower, upper) } else { (upper, lower) };
                    (mine == *slot).then(|| position.get(&theirs).copied())?
                })
                .collect();
            let key = if neighbours.is_empty() {
                i as f64
            } else {
                neighbours.iter().sum::<usize>() as f64 / neighbours.len() as f64
            };
            (key, i, *slot)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    rows[l] = keyed.into_iter().map(|(_, _, s)| s).collect();
}

/// Crossings between the links of neighbouring layers.
fn count_crossings(rows: &[Vec<Slot>], links: &[(Slot, Slot)], layer: &[usize]) -> usize {
    let position: HashMap<Slot, usize> = rows
        .iter()
        .flat_map(|row| row.iter().enumerate().map(|(i, s)| (*s, i)))
        .collect();
    let mut total = 0;
    for l in 0..rows.len().saturating_sub(1) {
        let between: Vec<(usize, usize)> = links
            .iter()
            .filter(|(upper, _)| slot_layer(*upper, layer) == l)
            .map(|(upper, lower)| (position[upper], position[lower]))
            .collect();
        for (i, a) in between.iter().enumerate() {
            for b in &between[i + 1..] {
                if (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1) {
                    total += 1;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(nodes: &[&str], edges: &[(&str, Option<&str>)]) -> WorkflowGraph {
        let g = nodes
            .iter()
            .fold(WorkflowGraph::new("G", nodes[0]), |g, n| {
                g.with_node(*n, "N", "u64", "u64", false)
            });
        edges.iter().fold(g, |g, (from, to)| {
            let kind = match to {
                Some(_) => EdgeKind::Direct,
                None => EdgeKind::Terminal { pattern: None },
            };
            g.with_edge(*from, *to, kind)
        })
    }

    fn node<'a>(l: &'a Layout, name: &str) -> &'a Placed {
        l.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// No two node boxes overlap.
    fn assert_no_overlap(l: &Layout) {
        for (i, a) in l.nodes.iter().enumerate() {
            for b in &l.nodes[i + 1..] {
                let apart = (a.x - b.x).abs() >= NODE_WIDTH || (a.y - b.y).abs() >= NODE_HEIGHT;
                assert!(apart, "{} and {} overlap", a.name, b.name);
            }
        }
    }

    #[test]
    fn a_chain_is_one_column_from_the_start_to_the_end() {
        let l = layout(&graph(
            &["a", "b", "c"],
            &[("a", Some("b")), ("b", Some("c")), ("c", None)],
        ));
        let layers: Vec<usize> = l.nodes.iter().map(|n| n.layer).collect();
        assert_eq!(layers, [0, 1, 2, 3]);
        assert!(l
            .nodes
            .windows(2)
            .all(|w| w[0].x == w[1].x && w[0].y < w[1].y));
        assert_eq!(l.crossings, 0);
        assert_eq!(l.edges[2].to, END);
    }

    #[test]
    fn a_node_goes_below_its_deepest_predecessor_and_long_edges_bend_between() {
        // a → b → c, and a → c directly: c is below b; a → c passes layer 1 at a bend.
        let l = layout(&graph(
            &["a", "b", "c"],
            &[
                ("a", Some("b")),
                ("a", Some("c")),
                ("b", Some("c")),
                ("c", None),
            ],
        ));
        assert_eq!(node(&l, "c").layer, 2);
        let skip = &l.edges[1];
        assert_eq!(skip.points.len(), 3, "{skip:?}");
        assert_ne!(
            skip.points[1].0,
            node(&l, "b").x,
            "the bend is beside b, not on it"
        );
    }

    #[test]
    fn a_cycle_is_drawn_with_one_back_edge() {
        let l = layout(&graph(
            &["a", "b", "c"],
            &[("a", Some("b")), ("b", Some("c")), ("c", Some("a"))],
        ));
        assert_eq!(
            l.edges
                .iter()
                .filter(|e| e.back)
                .map(|e| (&e.from[..], &e.to[..]))
                .collect::<Vec<_>>(),
            [("c", "a")]
        );
        assert!(node(&l, "a").y < node(&l, "b").y && node(&l, "b").y < node(&l, "c").y);
    }

    #[test]
    fn thirty_nodes_with_fan_out_and_arms_stay_readable_and_deterministic() {
        // A router fanning out to 6 branches of 4 nodes, joined back, and arms that skip.
        let mut nodes = vec!["route".to_owned()];
        let mut edges: Vec<(String, Option<String>)> = Vec::new();
        for b in 0..6 {
            for s in 0..4 {
                nodes.push(format!("b{b}s{s}"));
                let from = if s == 0 {
                    "route".to_owned()
                } else {
                    format!("b{b}s{}", s - 1)
                };
                edges.push((from, Some(format!("b{b}s{s}"))));
            }
        }
        for name in ["join", "report", "archive", "notify", "done"] {
            nodes.push(name.to_owned());
        }
        for b in 0..6 {
            edges.push((format!("b{b}s3"), Some("join".to_owned())));
        }
        edges.push(("route".to_owned(), Some("report".to_owned())));
        edges.push(("join".to_owned(), Some("report".to_owned())));
        edges.push(("report".to_owned(), Some("archive".to_owned())));
        edges.push(("report".to_owned(), Some("notify".to_owned())));
        edges.push(("archive".to_owned(), Some("done".to_owned())));
        edges.push(("notify".to_owned(), Some("done".to_owned())));
        edges.push(("done".to_owned(), None));
        assert_eq!(nodes.len(), 30);
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let pairs: Vec<(&str, Option<&str>)> = edges
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_deref()))
            .collect();
        let g = graph(&names, &pairs);
        let l = layout(&g);
        assert_no_overlap(&l);
        assert_eq!(l, layout(&g), "the same graph is laid out the same way");
        // Edges go down (no back edges in a DAG), one layer per step of the longest path.
        assert!(l.edges.iter().all(|e| !e.back));
        for e in &l.edges {
            assert!(e.points.windows(2).all(|w| w[0].1 < w[1].1), "{e:?}");
        }
        assert_eq!(node(&l, "join").layer, 5);
        assert_eq!(
            node(&l, "report").layer,
            6,
            "below the join, though route feeds it too"
        );
        // The branches are side by side: no crossings at all for this shape.
        assert_eq!(l.crossings, 0, "{l:#?}");
        assert!(l.width < 8.0 * COLUMN, "width {}", l.width);
    }

    #[test]
    fn crossings_are_reduced() {
        // Two sources whose targets are declared in the crossing order.
        let l = layout(&graph(
            &["s", "a", "b", "x", "y"],
            &[
                ("s", Some("a")),
                ("s", Some("b")),
                ("a", Some("y")),
                ("b", Some("x")),
            ],
        ));
        assert_eq!(l.crossings, 0);
        assert!((node(&l, "a").x < node(&l, "b").x) == (node(&l, "y").x < node(&l, "x").x));
    }
}
