//! `workflow!`: parse → validate → expand.

mod ast;
mod expand;
mod graph;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Expands a `workflow!` invocation.
pub fn expand(input: TokenStream) -> TokenStream {
    let def: ast::WorkflowDef = match syn::parse2(input) {
        Ok(def) => def,
        Err(err) => return err.to_compile_error(),
    };
    let mut errors = Errors::default();
    validate::validate(&def, &mut errors);
    let items = expand::expand_items(&def);
    if errors.is_empty() {
        let impls = expand::expand_impls(&def);
        quote::quote!(#items #impls)
    } else {
        let fallback = expand::expand_fallback_impls(&def);
        let errors = errors.into_compile_errors();
        quote::quote!(#items #fallback #errors)
    }
}
