//! The error type shared by nodes, workflows and the runtime.

use std::time::Duration;

/// Everything that can go wrong in a Floxide workflow.
///
/// Nodes return it to fail a step (`Err(..)`) or wrap it in [`Transition::Abort`]; the runtime
/// returns it when a run cannot finish. Variants carry the context needed to act on them
/// (which workflow, which node), and the type is cheap to clone so it can be recorded, logged
/// and returned at once.
///
/// [`Transition::Abort`]: crate::Transition::Abort
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FloxideError {
    /// A free-form failure raised by user code.
    #[error("Generic error: {0}")]
    Generic(String),

    /// A node name that the workflow does not know.
    #[error("node not found: {0}")]
    NodeNotFound(String),

    /// A node failed while executing.
    #[error("node `{node}` failed: {message}")]
    NodeExecutionFailed {
        /// The failing node's name in its workflow.
        node: String,
        /// What went wrong.
        message: String,
    },

    /// The run was cancelled through its [`WorkflowCtx`](crate::WorkflowCtx).
    #[error("Workflow cancelled")]
    Cancelled,

    /// The run's deadline (see [`WorkflowCtx::set_timeout`](crate::WorkflowCtx::set_timeout))
    /// passed before it finished; holds the configured timeout.
    #[error("Workflow timed out after {0:?}")]
    Timeout(Duration),

    /// The workflow (or the run named by an id) was never started.
    #[error("Workflow has not been started")]
    NotStarted,

    /// The workflow (or the run named by an id) has already completed.
    #[error("Workflow already completed")]
    AlreadyCompleted,

    /// The run ended with no work left but no terminal node produced an output: every
    /// branch ended in `Hold`, or in a `NextAll` with no elements.
    #[error(
        "workflow `{workflow}` finished without output: no terminal node produced a value \
         (every branch ended in Hold or in an empty NextAll)"
    )]
    NoOutput {
        /// The workflow's name.
        workflow: &'static str,
    },

    /// The start node returned `Hold`, so nothing could ever resume the run.
    #[error(
        "workflow `{workflow}`: start node `{node}` returned Hold, but nothing can resume a run \
         whose first step holds; return Next/NextAll from the start node"
    )]
    StartNodeHeld {
        /// The workflow's name.
        workflow: &'static str,
        /// The start node's name.
        node: &'static str,
    },

    /// Saving or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::CheckpointError),

    /// A checkpointed run was started under an id whose saved run had another input.
    #[error(
        "checkpoint `{id}` belongs to a run started with a different input; resume it with \
         `resume`, or start the new input under another id"
    )]
    CheckpointInputMismatch {
        /// The checkpoint id.
        id: String,
    },

    /// The distributed runtime or its backend refused or failed a request.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistributedError),

    /// A node panicked; the panic was caught and turned into this error.
    #[error("node `{node}` panicked: {message}")]
    NodePanicked {
        /// The node's name.
        node: String,
        /// The panic message.
        message: String,
    },

    /// A value could not be serialized.
    #[error("serialization failed: {0}")]
    SerializationError(String),

    /// Bytes could not be decoded into the expected type.
    #[error("deserialization failed: {0}")]
    DeserializationError(String),
}

impl FloxideError {
    /// A [`FloxideError::Generic`] from anything printable.
    pub fn generic(message: impl std::fmt::Display) -> Self {
        FloxideError::Generic(message.to_string())
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}
