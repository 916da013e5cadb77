//! `node!`: a node struct and its `Node` implementation from a closure-like body.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Expr, Field, Ident, Pat, Token, Type, Visibility};

use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(context);
    syn::custom_keyword!(input);
    syn::custom_keyword!(output);
}

/// The model of a `node!` invocation.
struct NodeDef {
    attrs: Vec<Attribute>,
    vis: Visibility,
    ident: Ident,
    fields: Vec<Field>,
    context: Option<Type>,
    input: Option<Type>,
    output: Option<Type>,
    ctx_param: Param,
    input_param: Param,
    body: Expr,
    /// Set when a key is given twice.
    duplicate_keys: Vec<(Span, &'static str)>,
}

/// `name` or `name: Type` in the closure's parameter list.
struct Param {
    pat: Pat,
    ty: Option<Type>,
}

impl Parse for Param {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let pat = Pat::parse_single(input)?;
        let ty = if input.peek(Token![:]) {
            input.parse::<Token![:]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Param { pat, ty })
    }
}

impl Parse for NodeDef {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>()?;
        let ident: Ident = input.parse()?;
        let mut fields = Vec::new();
        if input.peek(syn::token::Brace) {
            let content;
            braced!(content in input);
            let named = content.parse_terminated(Field::parse_named, Token![,])?;
            fields.extend(named);
        }
        let _ = input.parse::<Option<Token![;]>>()?;

        let mut def = NodeDef {
            attrs,
            vis,
            ident,
            fields,
            context: None,
            input: None,
            output: None,
            ctx_param: Param {
                pat: syn::parse_quote!(_),
                ty: None,
            },
            input_param: Param {
                pat: syn::parse_quote!(_),
                ty: None,
            },
            body: syn::parse_quote!({}),
            duplicate_keys: Vec::new(),
        };
        loop {
            let look = input.lookahead1();
            let (slot, name, span) = if look.peek(kw::context) {
                let k: kw::context = input.parse()?;
                (&mut def.context, "context", k.span)
            } else if look.peek(kw::input) {
                let k: kw::input = input.parse()?;
                (&mut def.input, "input", k.span)
            } else if look.peek(kw::output) {
                let k: kw::output = input.parse()?;
                (&mut def.output, "output", k.span)
            } else if look.peek(Token![|]) {
                break;
            } else {
                return Err(look.error());
            };
            input.parse::<Token![=]>()?;
            let ty: Type = input.parse()?;
            input.parse::<Token![;]>()?;
            // The first one stands; the others are reported.
            if slot.is_some() {
                def.duplicate_keys.push((span, name));
            } else {
                *slot = Some(ty);
            }
        }
        input.parse::<Token![|]>()?;
        def.ctx_param = input.parse()?;
        input.parse::<Token![,]>()?;
        def.input_param = input.parse()?;
        input.parse::<Token![|]>()?;
        def.body = input.parse()?;
        let _ = input.parse::<Option<Token![;]>>()?;
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the node's body"));
        }
        Ok(def)
    }
}

/// Expands a `node!` invocation.
pub fn expand(input: TokenStream) -> TokenStream {
    let def: NodeDef = match syn::parse2(input) {
        Ok(def) => def,
        Err(err) => return err.to_compile_error(),
    };
    let mut errors = Errors::default();
    for (span, key) in &def.duplicate_keys {
        errors.at(
            *span,
            format!("`{key}` is given twice; keep one `{key} = Type;`"),
        );
    }
    if def.input.is_none() {
        errors.spanned(
            &def.ident,
            format!(
                "node `{}` has no input type: add `input = Type;` before the closure",
                def.ident
            ),
        );
    }
    if def.output.is_none() {
        errors.spanned(
            &def.ident,
            format!(
                "node `{}` has no output type: add `output = Type;` before the closure",
                def.ident
            ),
        );
    }

    let NodeDef {
        attrs, vis, ident, ..
    } = &def;
    let fields = def.fields.iter().map(|f| {
        let (fattrs, fident, fty) = (&f.attrs, &f.ident, &f.ty);
        quote!(#(#fattrs)* pub #fident: #fty)
    });
    let item = quote! {
        #(#attrs)*
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #ident {
            #(#fields,)*
        }
    };
    let imp = match (&def.input, &def.output) {
        (Some(input_ty), Some(output_ty)) => node_impl(&def, input_ty, output_ty),
        _ => fallback_node_impl(&def),
    };
    let errors = errors.into_compile_errors();
    quote! {
        #item
        #errors
        #imp
    }
}

/// The node's context type: `context = C;`, else `()`.
fn context_type(def: &NodeDef) -> Type {
    def.context.clone().unwrap_or_else(|| syn::parse_quote!(()))
}

/// The `Node` impl running the closure.
fn node_impl(def: &NodeDef, input_ty: &Type, output_ty: &Type) -> TokenStream {
    let ident = &def.ident;
    let ctx_ty = context_type(def);
    let (ctx_pat, input_pat) = (&def.ctx_param.pat, &def.input_param.pat);
    let ctx_binding = match &def.ctx_param.ty {
        Some(ty) => quote!(let #ctx_pat: #ty = __ctx;),
        None => quote!(let #ctx_pat = __ctx;),
    };
    let input_binding = match &def.input_param.ty {
        Some(ty) => quote!(let #input_pat: #ty = __input;),
        None => quote!(let #input_pat = __input;),
    };
    let body = &def.body;
    quote! {
        #[automatically_derived]
        #[::floxide::__private::async_trait]
        impl ::floxide::Node<#ctx_ty> for #ident {
            type Input = #input_ty;
            type Output = #output_ty;

            #[allow(unused_variables, unused_braces, clippy::needless_return, clippy::unused_async)]
            async fn process(
                &self,
                __ctx: &#ctx_ty,
                __input: #input_ty,
            ) -> ::core::result::Result<::floxide::Transition<#output_ty>, ::floxide::FloxideError> {
                #ctx_binding
                #input_binding
                #body
            }
        }
    }
}

/// The `Node` impl of a node missing its input or output type, emitted next to that error so
/// that workflows using the node report nothing more. The program never compiles, so the
/// closure is left out; a missing side is guessed to be the other one (most nodes that forget
/// one map a type to itself), and `()` when both are missing.
fn fallback_node_impl(def: &NodeDef) -> TokenStream {
    let ident = &def.ident;
    let ctx_ty = context_type(def);
    let unit: Type = syn::parse_quote!(());
    let input_ty = def.input.as_ref().or(def.output.as_ref()).unwrap_or(&unit);
    let output_ty = def.output.as_ref().or(def.input.as_ref()).unwrap_or(&unit);
    quote! {
        #[automatically_derived]
        #[::floxide::__private::async_trait]
        impl ::floxide::Node<#ctx_ty> for #ident {
            type Input = #input_ty;
            type Output = #output_ty;

            async fn process(
                &self,
                _: &#ctx_ty,
                _: #input_ty,
            ) -> ::core::result::Result<::floxide::Transition<#output_ty>, ::floxide::FloxideError> {
                ::core::unreachable!("node failed to compile")
            }
        }
    }
}
