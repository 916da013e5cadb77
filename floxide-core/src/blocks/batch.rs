//! [`BatchNode`]: a node run over every element of a `Vec`, concurrently.

use std::marker::PhantomData;

use futures_util::stream::{self, StreamExt};

use crate::{Context, FloxideError, Node, Transition};

/// Runs an inner node over every element of its `Vec` input concurrently and collects the
/// results, in input order, into one `Vec` output.
///
/// `batch_size` bounds the concurrency: at most that many executions of the inner node are in
/// flight at a time, and a new one starts as soon as one finishes. A `batch_size` of 0 is
/// treated as 1 (one element at a time). The executions are plain futures polled by the
/// calling task: no thread or blocking pool is involved, so the inner node must be async
/// (a CPU-bound node should move its work to `spawn_blocking` itself).
///
/// The element results are combined like this:
/// - `Next(o)` contributes `o`; `NextAll(v)` contributes every element of `v`, in order;
///   `Hold` contributes nothing;
/// - `Err(e)` fails the whole batch with `Err(e)`, and `Abort(e)` with `Abort(e)` (so a retry
///   policy treats it as the inner node's abort). The first failure to happen wins and the
///   executions still in flight are dropped.
///
/// On success the batch returns `Next(outputs)`.
///
/// ```
/// use floxide_core::*;
///
/// #[derive(Debug, Clone)]
/// struct Square;
///
/// #[async_trait]
/// impl Node for Square {
///     type Input = u64;
///     type Output = u64;
///     async fn process(&self, _ctx: &(), n: u64) -> Result<Transition<u64>, FloxideError> {
///         Ok(Transition::Next(n * n))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), FloxideError> {
/// let batch = BatchNode::new(Square, 2);
/// let next = batch.process(&(), vec![1, 2, 3]).await?;
/// assert_eq!(next, Transition::Next(vec![1, 4, 9]));
/// # Ok(())
/// # }
/// ```
///
/// The type names the context as in Floxide 3.x (`BatchNode<Ctx, Inner>`); in a `workflow!`
/// field it is usually written `BatchNode<(), Square>`.
pub struct BatchNode<C, N> {
    /// The node run over each element.
    pub node: N,
    /// How many elements are processed at a time (at least 1).
    pub batch_size: usize,
    _context: PhantomData<fn() -> C>,
}

impl<C, N> BatchNode<C, N> {
    /// Runs `node` over each element, at most `batch_size` (at least 1) at a time.
    pub fn new(node: N, batch_size: usize) -> Self {
        BatchNode {
            node,
            batch_size: batch_size.max(1),
            _context: PhantomData,
        }
    }

    /// The inner node.
    pub fn inner(&self) -> &N {
        &self.node
    }

    /// How many elements are processed at a time (at least 1).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

impl<C: Context, N: Node<C>> BatchNode<C, N> {
    /// Runs the batch on `ctx` and returns the outputs, in input order (Floxide 3.x); an
    /// `Abort` of the inner node is returned as its error.
    ///
    /// # Errors
    /// The first error (or abort) of the inner node.
    pub async fn process_batch(
        &self,
        ctx: C,
        inputs: Vec<N::Input>,
    ) -> Result<Vec<N::Output>, FloxideError> {
        self.run_all(&ctx, inputs).await.map_err(Stop::into_error)
    }

    /// Runs the inner node over every input, at most `batch_size` at a time.
    async fn run_all(&self, ctx: &C, inputs: Vec<N::Input>) -> Result<Vec<N::Output>, Stop> {
        // One slot per element, so outputs keep input order whatever order they finish in.
        let mut slots: Vec<Vec<N::Output>> = inputs.iter().map(|_| Vec::new()).collect();
        let mut results = stream::iter(inputs.into_iter().enumerate())
            .map(|(index, input)| async move { (index, self.node.process(ctx, input).await) })
            .buffer_unordered(self.batch_size);
        while let Some((index, result)) = results.next().await {
            match result.map_err(Stop::Failed)? {
                Transition::Next(output) => slots[index].push(output),
                Transition::NextAll(outputs) => slots[index] = outputs,
                Transition::Hold => {}
                Transition::Abort(error) => return Err(Stop::Aborted(error)),
            }
        }
        Ok(slots.into_iter().flatten().collect())
    }
}

/// Why a batch stopped early.
enum Stop {
    /// The inner node returned `Err`.
    Failed(FloxideError),
    /// The inner node returned `Abort`.
    Aborted(FloxideError),
}

impl Stop {
    fn into_error(self) -> FloxideError {
        match self {
            Stop::Failed(e) | Stop::Aborted(e) => e,
        }
    }
}

impl<C, N: Clone> Clone for BatchNode<C, N> {
    fn clone(&self) -> Self {
        BatchNode {
            node: self.node.clone(),
            batch_size: self.batch_size,
            _context: PhantomData,
        }
    }
}

impl<C, N: std::fmt::Debug> std::fmt::Debug for BatchNode<C, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchNode")
            .field("node", &self.node)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

#[async_trait::async_trait]
impl<C, N> Node<C> for BatchNode<C, N>
where
    C: Context,
    N: Node<C>,
{
    type Input = Vec<N::Input>;
    type Output = Vec<N::Output>;

    /// # Errors
    /// The first error returned by the inner node.
    async fn process(
        &self,
        ctx: &C,
        inputs: Vec<N::Input>,
    ) -> Result<Transition<Vec<N::Output>>, FloxideError> {
        match self.run_all(ctx, inputs).await {
            Ok(outputs) => Ok(Transition::Next(outputs)),
            Err(Stop::Failed(error)) => Err(error),
            Err(Stop::Aborted(error)) => Ok(Transition::Abort(error)),
        }
    }
}
