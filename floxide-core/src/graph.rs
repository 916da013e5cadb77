//! [`WorkflowGraph`]: a workflow's shape as data — its nodes with their types and its edges
//! with their kinds — so that tools that do not have the workflow's code (the `floxide`
//! dashboard) can draw its runs.
//!
//! `workflow!` generates [`Workflow::graph`](crate::Workflow::graph); workers and
//! orchestrators register it in their backend under the workflow's name and the graph's
//! [`hash`](WorkflowGraph::hash), so that a redeploy with a changed graph shows up as a new
//! version next to the old one.
//!
//! ```
//! use floxide_core::{EdgeKind, WorkflowGraph};
//!
//! // What `workflow! { pub struct Flow { a: Inc, b: Inc } start = a; edges { a => [b]; b => []; } }`
//! // generates as `Flow::graph()`:
//! let graph = WorkflowGraph::new("Flow", "a")
//!     .with_node("a", "Inc", "u64", "u64", false)
//!     .with_node("b", "Inc", "u64", "u64", false)
//!     .with_edge("a", Some("b"), EdgeKind::Direct)
//!     .with_edge("b", None, EdgeKind::Terminal { pattern: None });
//! assert_eq!(graph.hash().len(), 16);
//! assert_eq!(graph.hash(), graph.clone().hash());
//! assert_ne!(graph.hash(), graph.clone().with_edge("a", None, EdgeKind::OnFailure).hash());
//! ```

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How many versions of a workflow's graph a backend keeps: registering a new one drops the
/// least recently registered beyond this count, so the registry does not grow with every
/// deployment.
pub const VERSIONS_KEPT: usize = 20;

/// The versions of one workflow to drop once `current` was registered: all but the
/// [`VERSIONS_KEPT`] most recently registered (`current` counting as the most recent),
/// from `versions` as (hash, last registration).
pub fn versions_to_drop<'a>(
    versions: impl IntoIterator<Item = (&'a str, SystemTime)>,
    current: &str,
) -> Vec<String> {
    let mut others: Vec<(&str, SystemTime)> = versions
        .into_iter()
        .filter(|(hash, _)| *hash != current)
        .collect();
    others.sort_by_key(|(_, seen)| std::cmp::Reverse(*seen));
    others
        .into_iter()
        .skip(VERSIONS_KEPT - 1)
        .map(|(hash, _)| hash.to_owned())
        .collect()
}

/// A workflow's nodes and edges, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkflowGraph {
    /// The workflow's name ([`Workflow::name`](crate::Workflow::name)).
    pub workflow: String,
    /// The start node.
    pub start: String,
    /// The nodes.
    pub nodes: Vec<GraphNode>,
    /// The edges.
    pub edges: Vec<GraphEdge>,
}

/// One node of a [`WorkflowGraph`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GraphNode {
    /// The node's field name in the workflow.
    pub name: String,
    /// The node's type, as written in the workflow.
    pub node_type: String,
    /// The type name of its input.
    pub input: String,
    /// The type name of its output.
    pub output: String,
    /// Whether it runs under a `#[retry]` policy.
    pub retried: bool,
}

/// One edge of a [`WorkflowGraph`]: from a node to a successor, or to the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GraphEdge {
    /// The source node.
    pub from: String,
    /// The successor (`None` for a terminal edge: the source's output is the run's output).
    pub to: Option<String>,
    /// How the edge is taken (in JSON, its fields sit next to `from` and `to`:
    /// `{"from": "a", "to": "b", "kind": "arm", "pattern": "Choice::Left(x)"}`).
    #[serde(flatten)]
    pub kind: EdgeKind,
}

/// How an edge of a [`WorkflowGraph`] is taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EdgeKind {
    /// `a => [b]`: always, with a clone of the output.
    Direct,
    /// `Choice::Left(x) => [b]`: when the output matches `pattern` (with its guard).
    Arm {
        /// The pattern as written (`Choice::Left(x) if x > 3`).
        pattern: String,
    },
    /// `a on_failure => [b]`: when `a` fails (after its retries), with `a`'s input.
    OnFailure,
    /// `a => []`, or an arm with no successor: the output ends this branch of the run.
    Terminal {
        /// The arm's pattern, for a terminal arm.
        pattern: Option<String>,
    },
}

impl WorkflowGraph {
    /// A graph of `workflow` starting at `start`, without nodes or edges yet.
    pub fn new(workflow: impl Into<String>, start: impl Into<String>) -> Self {
        WorkflowGraph {
            workflow: workflow.into(),
            start: start.into(),
            nodes: Vec::new(),
            edges: Vec::new(),
        }
    }

    /// Adds a node.
    pub fn with_node(
        mut self,
        name: impl Into<String>,
        node_type: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
        retried: bool,
    ) -> Self {
        self.nodes.push(GraphNode {
            name: name.into(),
            node_type: node_type.into(),
            input: input.into(),
            output: output.into(),
            retried,
        });
        self
    }

    /// Adds an edge.
    pub fn with_edge(mut self, from: impl Into<String>, to: Option<&str>, kind: EdgeKind) -> Self {
        self.edges.push(GraphEdge {
            from: from.into(),
            to: to.map(str::to_owned),
            kind,
        });
        self
    }

    /// A short, stable digest of the whole graph (16 hex digits, FNV-1a over its JSON form):
    /// the same graph always has the same hash, and any change to a node, a type or an edge
    /// gives another.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{digest:016x}")
    }
}

/// A [`WorkflowGraph`] as a backend keeps it: one per workflow name and graph hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RegisteredGraph {
    /// The graph.
    pub graph: WorkflowGraph,
    /// Its [`hash`](WorkflowGraph::hash).
    pub hash: String,
    /// When a process first registered it.
    pub first_seen: SystemTime,
    /// When a process last registered it (workers do when they start).
    pub last_seen: SystemTime,
}

impl RegisteredGraph {
    /// `graph`, registered at `first_seen` and last at `last_seen`.
    pub fn new(graph: WorkflowGraph, first_seen: SystemTime, last_seen: SystemTime) -> Self {
        RegisteredGraph {
            hash: graph.hash(),
            graph,
            first_seen,
            last_seen,
        }
    }
}
