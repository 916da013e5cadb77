//! Core of Floxide: nodes, transitions, contexts, workflows and the in-process engine.
//!
//! Use it through the `floxide` crate, which re-exports everything here together with the
//! `node!`, `workflow!` and `#[derive(Merge)]` macros.

#![warn(missing_docs)]

mod blocks;
pub mod checkpoint;
pub mod context;
pub mod distributed;
pub mod error;
pub mod graph;
mod item;
pub mod merge;
pub mod node;
pub mod retry;
mod run;
pub mod transition;
pub mod workflow;

// The module paths of Floxide 3.x for the building blocks (`floxide::batch::BatchNode`, ...).
// The other 3.x paths (`floxide::transition::Transition`, `floxide::error::FloxideError`,
// `floxide::context::SharedState`, `floxide::merge::Fixed`, ...) are the modules above.

/// [`BatchNode`], at its Floxide 3.x path.
pub mod batch {
    pub use crate::blocks::BatchNode;
}
/// [`CompositeNode`], at its Floxide 3.x path.
pub mod composite {
    pub use crate::blocks::CompositeNode;
}
/// [`source`](crate::source()) and [`Source`], at their Floxide 3.x path.
pub mod source {
    pub use crate::blocks::{source, Source, SourceSummary};
}
/// [`SplitNode`], at its Floxide 3.x path.
pub mod split {
    pub use crate::blocks::SplitNode;
}

#[doc(hidden)]
pub mod private;

pub use async_trait::async_trait;
pub use blocks::{source, BatchNode, CompositeNode, Source, SourceSummary, SplitNode};
pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointRecord, CheckpointStore, FileCheckpointStore,
    InMemoryCheckpointStore,
};
pub use context::{Context, WorkflowCtx};
pub use error::FloxideError;
pub use graph::{EdgeKind, GraphEdge, GraphNode, RegisteredGraph, WorkflowGraph};
pub use item::{ItemId, ParseItemIdError, WorkItem};
pub use merge::{EventId, EventLog, Fixed, Merge, SharedState};
pub use node::Node;
pub use retry::{with_retry, BackoffStrategy, RetryError, RetryNode, RetryPolicy};
pub use tokio_util::sync::CancellationToken;
pub use transition::Transition;
pub use workflow::{StepEnv, StepFailure, StepSink, Workflow};
