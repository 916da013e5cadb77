//! Building blocks: ready-made nodes and drivers that compose with any workflow.
//!
//! - [`SplitNode`] turns one input into many (`Transition::NextAll`).
//! - [`BatchNode`] runs a node over every element of a `Vec`, concurrently.
//! - [`CompositeNode`] uses a whole workflow as one node.
//! - [`source()`] feeds a workflow from a channel, one run per item.

mod batch;
mod composite;
mod source;
mod split;

pub use batch::BatchNode;
pub use composite::CompositeNode;
pub use source::{source, Source, SourceSummary};
pub use split::SplitNode;
