//! What a node asks the workflow to do next.

use crate::FloxideError;

/// The result of one node execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition<O> {
    /// Continue with one value: each successor of the node receives it.
    Next(O),
    /// Continue with several values: each is routed as if returned by its own `Next`
    /// (so a branching node routes each element by its variant).
    NextAll(Vec<O>),
    /// Produce nothing for now: the branch stops here. Used by joins that wait until all
    /// their siblings have arrived (see the distributed guarantees on `Hold`).
    Hold,
    /// Stop this branch with an error. Routed to the node's `on_failure` edge when it has
    /// one; otherwise the run fails with this error. Not retried unless the retry policy
    /// retries every error (`RetryError::All`).
    Abort(FloxideError),
}
