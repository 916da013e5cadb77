//! Core of Floxide: nodes, transitions, contexts, workflows and the in-process engine.
//!
//! Use it through the `floxide` crate, which re-exports everything here together with the
//! `node!`, `workflow!` and `#[derive(Merge)]` macros.

#![warn(missing_docs)]

mod blocks;
mod checkpoint;
mod context;
pub mod distributed;
mod error;
mod item;
mod merge;
mod node;
mod retry;
mod run;
mod transition;
mod workflow;

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
pub use item::{ItemId, ParseItemIdError, WorkItem};
pub use merge::{EventId, EventLog, Fixed, Merge, SharedState};
pub use node::Node;
pub use retry::{with_retry, BackoffStrategy, RetryError, RetryNode, RetryPolicy};
pub use tokio_util::sync::CancellationToken;
pub use transition::Transition;
pub use workflow::{StepEnv, StepFailure, StepSink, Workflow};
