//! [`SplitNode`]: one input, many outputs.

use std::fmt;
use std::marker::PhantomData;

use crate::{Context, FloxideError, Node, Transition};

/// A node that splits its input into several values with a function and returns them as
/// [`Transition::NextAll`]: each value is routed to the successors on its own.
///
/// It is a node for every context, so it fits any workflow. In a `workflow!` field, name its
/// type with a function pointer (the default third parameter), since closures have no name:
///
/// ```
/// use floxide_core::*;
///
/// fn words(text: String) -> Vec<String> {
///     text.split_whitespace().map(str::to_owned).collect()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), FloxideError> {
/// let split: SplitNode<String, String> = SplitNode::new(words);
/// let next = split.process(&(), "to be or not".to_owned()).await?;
/// assert_eq!(
///     next,
///     Transition::NextAll(vec!["to".into(), "be".into(), "or".into(), "not".into()])
/// );
/// # Ok(())
/// # }
/// ```
///
/// An empty `Vec` ends the branch without output, like any empty `NextAll`.
pub struct SplitNode<I, O, F = fn(I) -> Vec<O>> {
    split: F,
    _types: PhantomData<fn(I) -> Vec<O>>,
}

impl<I, O, F> SplitNode<I, O, F>
where
    F: Fn(I) -> Vec<O> + Clone + Send + Sync,
{
    /// A node that returns `NextAll(split(input))`.
    pub fn new(split: F) -> Self {
        SplitNode {
            split,
            _types: PhantomData,
        }
    }
}

impl<I, O, F: Clone> Clone for SplitNode<I, O, F> {
    fn clone(&self) -> Self {
        SplitNode {
            split: self.split.clone(),
            _types: PhantomData,
        }
    }
}

/// Shows the input and output types; the function itself has no `Debug`.
impl<I, O, F> fmt::Debug for SplitNode<I, O, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitNode")
            .field("input", &std::any::type_name::<I>())
            .field("output", &std::any::type_name::<O>())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<C, I, O, F> Node<C> for SplitNode<I, O, F>
where
    C: Context,
    I: Send + Sync,
    O: Send + Sync,
    F: Fn(I) -> Vec<O> + Send + Sync,
{
    type Input = I;
    type Output = O;

    /// Never fails.
    async fn process(&self, _ctx: &C, input: I) -> Result<Transition<O>, FloxideError> {
        Ok(Transition::NextAll((self.split)(input)))
    }
}
