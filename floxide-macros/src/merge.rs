//! `#[derive(Merge)]`: merge a struct field by field.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, Index};

/// Expands `#[derive(Merge)]`.
pub fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let ident = &input.ident;
    let data = match &input.data {
        Data::Struct(data) => data,
        Data::Enum(e) => {
            return syn::Error::new_spanned(
                e.enum_token,
                format!(
                    "#[derive(Merge)] works on structs only: an enum has no field-by-field join. \
                     Implement `Merge` for `{ident}` by hand (commutative, associative, idempotent)"
                ),
            )
            .to_compile_error()
        }
        Data::Union(u) => {
            return syn::Error::new_spanned(
                u.union_token,
                "#[derive(Merge)] works on structs only; implement `Merge` by hand",
            )
            .to_compile_error()
        }
    };
    let merges: Vec<TokenStream> = match &data.fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let name = &f.ident;
                quote_spanned!(at_type(f)=> ::floxide::Merge::merge(&mut self.#name, other.#name);)
            })
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let index = Index::from(i);
                quote_spanned!(at_type(f)=> ::floxide::Merge::merge(&mut self.#index, other.#index);)
            })
            .collect(),
        Fields::Unit => Vec::new(),
    };
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::floxide::Merge));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::floxide::Merge for #ident #ty_generics #where_clause {
            #[allow(unused_variables)]
            fn merge(&mut self, other: Self) {
                #(#merges)*
            }
        }
    }
}

/// A span that resolves names like the macro's own code but points at `field`'s type, where a
/// type without `Merge` is reported.
fn at_type(field: &Field) -> Span {
    Span::call_site().located_at(field.ty.span())
}
