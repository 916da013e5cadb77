//! Procedural macros of Floxide: `node!`, `workflow!` and `#[derive(Merge)]`.
//!
//! Use them through the `floxide` crate. Each macro parses its input into a typed model,
//! validates it (collecting every error, each spanned on the offending tokens) and expands
//! it into code that refers to `::floxide::…` paths only.

mod errors;
mod merge;
mod node;
mod workflow;

use proc_macro::TokenStream;

/// Declares a node struct and its `Node` implementation from a closure-like body.
///
/// ```text
/// node! {
///     pub struct AddOne {};
///     context = ();
///     input = u64;
///     output = u64;
///     |_ctx, n| { Ok(Transition::Next(n + 1)) }
/// }
/// ```
#[proc_macro]
pub fn node(input: TokenStream) -> TokenStream {
    node::expand(input.into()).into()
}

/// Declares a workflow: its node fields, start node, context type and edges, checked at
/// compile time. See the `floxide` crate documentation for the grammar.
#[proc_macro]
pub fn workflow(input: TokenStream) -> TokenStream {
    workflow::expand(input.into()).into()
}

/// Implements `Merge` for a struct by merging its fields one by one.
#[proc_macro_derive(Merge)]
pub fn derive_merge(input: TokenStream) -> TokenStream {
    merge::expand(input.into()).into()
}
