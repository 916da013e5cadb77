//! Parsing `workflow!` input into the model of [`ast`](super::ast).
//!
//! Parsing only fails on input that does not follow the grammar; everything that can be
//! checked on a well-formed model (names, graph shape, attributes) is left to `validate`, so
//! those errors are collected and reported together.

use syn::parse::{Parse, ParseStream};
use syn::{braced, bracketed, Attribute, Expr, Ident, Pat, Token, Type, Visibility};

use super::ast::{
    variant_name, ArmDef, EdgeBody, EdgeEntry, FieldClash, FieldDef, RetryAttr, WorkflowDef,
};

mod kw {
    syn::custom_keyword!(start);
    syn::custom_keyword!(context);
    syn::custom_keyword!(output);
    syn::custom_keyword!(edges);
    syn::custom_keyword!(on_failure);
}

impl Parse for WorkflowDef {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `struct Name { .. }`: a workflow starts with its struct, e.g. \
                 `pub struct MyFlow { a: NodeA, b: NodeB }`",
            )
        })?;
        let ident: Ident = input.parse()?;
        if input.peek(Token![<]) {
            return Err(
                input.error("workflows cannot be generic; use concrete node types in the fields")
            );
        }
        let content;
        braced!(content in input);
        let (fields, clashing_fields) = parse_fields(&content)?;
        let _ = input.parse::<Option<Token![;]>>()?;

        let mut def = WorkflowDef {
            attrs,
            vis,
            ident,
            fields,
            clashing_fields,
            start: None,
            context: None,
            output: None,
            edges_kw: None,
            edges: Vec::new(),
        };
        while !input.is_empty() {
            let look = input.lookahead1();
            if look.peek(kw::start) {
                let key = input.parse::<kw::start>()?;
                input.parse::<Token![=]>()?;
                let node: Ident = input.parse()?;
                input.parse::<Token![;]>()?;
                if def.start.is_some() {
                    return Err(syn::Error::new(
                        key.span,
                        "`start` is given twice; keep one",
                    ));
                }
                def.start = Some((key.span, node));
            } else if look.peek(kw::context) {
                let key = input.parse::<kw::context>()?;
                input.parse::<Token![=]>()?;
                let ty: Type = input.parse()?;
                input.parse::<Token![;]>()?;
                if def.context.is_some() {
                    return Err(syn::Error::new(
                        key.span,
                        "`context` is given twice; keep one",
                    ));
                }
                def.context = Some(ty);
            } else if look.peek(kw::output) {
                let key = input.parse::<kw::output>()?;
                input.parse::<Token![=]>()?;
                let ty: Type = input.parse()?;
                input.parse::<Token![;]>()?;
                if def.output.is_some() {
                    return Err(syn::Error::new(
                        key.span,
                        "`output` is given twice; keep one",
                    ));
                }
                def.output = Some(ty);
            } else if look.peek(kw::edges) {
                let key: Ident = input.call(syn::ext::IdentExt::parse_any)?;
                if def.edges_kw.is_some() {
                    return Err(syn::Error::new_spanned(
                        &key,
                        "`edges` is given twice; put every entry in one `edges { .. }` block",
                    ));
                }
                let body;
                braced!(body in input);
                while !body.is_empty() {
                    def.edges.push(body.parse()?);
                }
                let _ = input.parse::<Option<Token![;]>>()?;
                def.edges_kw = Some(key);
            } else {
                return Err(look.error());
            }
        }
        Ok(def)
    }
}

/// The struct's fields, and those that clash with an earlier one (set aside for validation).
fn parse_fields(content: ParseStream) -> syn::Result<(Vec<FieldDef>, Vec<FieldClash>)> {
    let mut fields: Vec<FieldDef> = Vec::new();
    let mut clashes = Vec::new();
    while !content.is_empty() {
        let all_attrs = content.call(Attribute::parse_outer)?;
        let _vis: Visibility = content.parse()?;
        let ident: Ident = content.parse()?;
        content.parse::<Token![:]>()?;
        let ty: Type = content.parse()?;
        let mut attrs = Vec::new();
        let mut retry = None;
        for attr in all_attrs {
            if attr.path().is_ident("retry") {
                let policy = match &attr.meta {
                    syn::Meta::NameValue(nv) => match &nv.value {
                        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().cloned(),
                        _ => None,
                    },
                    _ => None,
                };
                // A second #[retry] on the same field is reported by validation.
                if retry.is_none() {
                    retry = Some(RetryAttr { attr, policy });
                } else {
                    attrs.push(attr);
                }
            } else {
                attrs.push(attr);
            }
        }
        let variant = variant_name(&ident);
        let earlier = fields
            .iter()
            .find(|f| f.ident == ident || variant_name(&f.ident) == variant);
        match earlier {
            Some(earlier) => clashes.push(FieldClash {
                field: ident,
                earlier: earlier.ident.clone(),
            }),
            None => fields.push(FieldDef {
                attrs,
                ident,
                ty,
                retry,
            }),
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok((fields, clashes))
}

impl Parse for EdgeEntry {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let source: Ident = input.parse()?;
        let on_failure = if input.peek(kw::on_failure) {
            let kw: kw::on_failure = input.parse()?;
            Some(Ident::new("on_failure", kw.span))
        } else {
            None
        };
        input.parse::<Token![=>]>()?;
        let body = if input.peek(syn::token::Bracket) {
            EdgeBody::Direct(parse_targets(input)?)
        } else if input.peek(syn::token::Brace) {
            let inner;
            braced!(inner in input);
            if inner.is_empty() {
                EdgeBody::Direct(Vec::new())
            } else if inner.peek(syn::token::Bracket) {
                let targets = parse_targets(&inner)?;
                let _ = inner.parse::<Option<Token![;]>>()?;
                if !inner.is_empty() {
                    return Err(
                        inner.error("expected `}` after the successor list: `a => { [b, c] };`")
                    );
                }
                EdgeBody::Direct(targets)
            } else {
                let mut arms = Vec::new();
                while !inner.is_empty() {
                    arms.push(inner.parse()?);
                }
                EdgeBody::Arms(arms)
            }
        } else {
            return Err(input.error(
                "expected a successor list after `=>`: `[b, c]`, `[]` for a terminal, or \
                 `{ Enum::Variant(x) => [b]; .. }` to branch",
            ));
        };
        let _ = input.parse::<Option<Token![;]>>()?;
        Ok(EdgeEntry {
            source,
            on_failure,
            body,
        })
    }
}

impl Parse for ArmDef {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let pat = Pat::parse_multi_with_leading_vert(input)?;
        let guard = if input.peek(Token![if]) {
            input.parse::<Token![if]>()?;
            Some(input.parse::<Expr>()?)
        } else {
            None
        };
        input.parse::<Token![=>]>()?;
        let targets = if input.peek(syn::token::Brace) {
            let inner;
            braced!(inner in input);
            if inner.is_empty() {
                Vec::new()
            } else {
                let t = parse_targets(&inner)?;
                let _ = inner.parse::<Option<Token![;]>>()?;
                t
            }
        } else {
            parse_targets(input)?
        };
        if !input.is_empty() && !input.peek(Token![,]) {
            input.parse::<Token![;]>()?;
        } else {
            let _ = input.parse::<Option<Token![,]>>()?;
        }
        Ok(ArmDef {
            pat,
            guard,
            targets,
        })
    }
}

/// `[a, b, c]` (possibly empty, trailing comma allowed).
fn parse_targets(input: ParseStream) -> syn::Result<Vec<Ident>> {
    let list;
    bracketed!(list in input);
    let names = list.parse_terminated(Ident::parse, Token![,])?;
    Ok(names.into_iter().collect())
}
