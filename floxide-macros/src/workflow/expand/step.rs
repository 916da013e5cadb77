//! The code of one node's step: the `match` arm that runs its work item, and what its output
//! routes to (successor items, arms of its output enum, its failure handler).

use super::*;

/// The `match` arm executing one node's work item.
pub(super) fn step_arm(names: &Names, node: &FieldDef, output: &TokenStream) -> TokenStream {
    let def = names.def;
    let item_enum = &names.item_enum;
    let variant = variant_name(&node.ident);
    let field = &node.ident;
    let node_str = field.to_string();
    let failure_targets: &[Ident] = match def.failure_entry(field).map(|e| &e.body) {
        Some(EdgeBody::Direct(t)) => t,
        _ => &[],
    };

    let invoke = match node.retry.as_ref().and_then(|r| r.policy.as_ref()) {
        Some(policy) => {
            let policy_ref = quote_spanned!(policy.span()=> &self.#policy);
            quote! {
                ::floxide::__private::invoke_with_retry(#node_str, &self.#field, #policy_ref, __ctx, __input, __env).await
            }
        }
        None => quote!(::floxide::__private::invoke(#node_str, &self.#field, __ctx, __input).await),
    };

    let keep_input = if failure_targets.is_empty() {
        quote!()
    } else {
        quote!(let __failed_input = ::core::clone::Clone::clone(&__input);)
    };

    let route = route_code(names, node, output);
    let on_failure = failure_code(names, failure_targets, &node_str);
    let node_out = names.node_output(node);

    quote! {
        #item_enum::#variant(__id, __input) => {
            #keep_input
            let __result = #invoke;
            let mut __route = |__out: #node_out| { #route };
            match __result {
                ::core::result::Result::Ok(::floxide::Transition::Next(__out)) => __route(__out),
                ::core::result::Result::Ok(::floxide::Transition::NextAll(__outs)) => {
                    for __out in __outs {
                        __route(__out);
                    }
                }
                ::core::result::Result::Ok(::floxide::Transition::Hold) => __sink.hold(),
                ::core::result::Result::Ok(::floxide::Transition::Abort(__error)) => {
                    let __failure = ::floxide::__private::Failure { error: __error, retry_after: ::core::option::Option::None, policy_applied: false, aborted: true };
                    #on_failure
                }
                ::core::result::Result::Err(__failure) => {
                    #on_failure
                }
            }
        }
    }
}

/// What a step of `node` does with each of its outputs `__out`: the run's output for a
/// terminal node, else the work items of its edges (or of the arm its output matches).
fn route_code(names: &Names, node: &FieldDef, output: &TokenStream) -> TokenStream {
    let field = &node.ident;
    let entry = names.def.entry(field);
    match entry.map(|e| &e.body) {
        Some(EdgeBody::Direct(targets)) if targets.is_empty() => {
            // Spanned on the terminal's entry (`c => [];`), where a type mismatch is reported.
            let source = entry.map_or(field.span(), |e| e.source.span());
            let value =
                quote_spanned!(source=> ::floxide::__private::terminal::<_, #output>(__out));
            quote!(__sink.output(#value);)
        }
        Some(EdgeBody::Direct(targets)) => push_all(
            names,
            targets,
            |target, value| {
                let input = names.node_input(names.node(target));
                quote_spanned!(target.span()=> ::floxide::__private::edge::<_, #input>(#value))
            },
            &quote!(__out),
        ),
        Some(EdgeBody::Arms(arms)) => {
            let arms = arms.iter().map(|arm| arm_code(names, node, arm, output));
            // The scrutinee sits on the entry's source, so that an arm that does not match
            // the node's output type is reported with "this expression has type `..`" there.
            let source = entry.map_or(field.span(), |e| e.source.span());
            let scrutinee = quote_spanned!(Span::call_site().located_at(source)=> __out);
            quote!(match #scrutinee { #(#arms)* })
        }
        None => quote!(),
    }
}

/// What a step does when its node fails (or aborts) with `__failure`: the step fails, unless
/// the node has `on_failure` edges and the failure is not to be retried, in which case the
/// failure is recorded and the edges' items are made from the kept input.
fn failure_code(names: &Names, failure_targets: &[Ident], node_str: &str) -> TokenStream {
    if failure_targets.is_empty() {
        quote!(return ::core::result::Result::Err(__failure.into_step_failure(#node_str));)
    } else {
        let pushes = push_all(
            names,
            failure_targets,
            |target, value| {
                let input = names.node_input(names.node(target));
                quote_spanned!(target.span()=> ::floxide::__private::failure::<_, #input>(#value))
            },
            &quote!(__failed_input),
        );
        quote! {
            if __failure.retry_after.is_some() {
                return ::core::result::Result::Err(__failure.into_step_failure(#node_str));
            }
            __sink.handled_failure(#node_str, __failure.error);
            #pushes
        }
    }
}

/// Pushes one work item per target, each with `convert(target, value)`: clones of `value`
/// for all but the last target, which takes it.
fn push_all(
    names: &Names,
    targets: &[Ident],
    convert: impl Fn(&Ident, TokenStream) -> TokenStream,
    value: &TokenStream,
) -> TokenStream {
    let item_enum = &names.item_enum;
    let last = targets.len().saturating_sub(1);
    let pushes = targets.iter().enumerate().map(|(i, target)| {
        let v = if i == last {
            value.clone()
        } else {
            quote!(::core::clone::Clone::clone(&#value))
        };
        let converted = convert(target, v);
        let variant = variant_name(target);
        quote! {
            let __k = __sink.next_index();
            __sink.push(#item_enum::#variant(__id.child(__k), #converted));
        }
    });
    quote!(#(#pushes)*)
}

/// One arm of a branching node: its pattern, guard and routing.
fn arm_code(names: &Names, node: &FieldDef, arm: &ArmDef, output: &TokenStream) -> TokenStream {
    let pat = &forward_wildcard_fields(&arm.pat);
    let guard = arm.guard.as_ref().map(|g| quote!(if #g));
    let node_out = names.node_output(node);
    let wildcard = matches!(pat, Pat::Wild(_));
    let mut bindings = Vec::new();
    collect_bindings(pat, &mut bindings);

    // The value handed on: the binding, a tuple of bindings, the whole output (wildcard) or
    // a default, converted to `target` by `conv` (spanned on `span`).
    let payload = |target_ty: &TokenStream, conv: &TokenStream, span: Span, last: bool| {
        let take = |b: &Ident| {
            if last {
                quote!(#b)
            } else {
                quote!(::core::clone::Clone::clone(&#b))
            }
        };
        if wildcard {
            let v = if last {
                quote!(__out)
            } else {
                quote!(::core::clone::Clone::clone(&__out))
            };
            quote_spanned! {span=> {
                #[allow(unused_imports)]
                use ::floxide::__private::{WildcardDefault as _, WildcardWhole as _};
                (&::floxide::__private::WildcardInput::<#node_out, #target_ty>::new()).wildcard_input(#v)
            }}
        } else {
            match bindings.as_slice() {
                [] => {
                    // `Self` is inferred from where the value goes, so that every token of the
                    // call, and a missing `Default`, sits on `span`.
                    quote_spanned!(span=> ::floxide::__private::DefaultArmInput::default_arm_input())
                }
                [one] => {
                    let v = take(one);
                    quote_spanned!(span=> #conv::<_, #target_ty>(#v))
                }
                many => {
                    let vs = many.iter().map(take);
                    quote_spanned!(span=> #conv::<_, #target_ty>((#(#vs),*)))
                }
            }
        }
    };

    let body = if arm.targets.is_empty() {
        let span = syn::spanned::Spanned::span(pat);
        let v = payload(output, &quote!(::floxide::__private::terminal), span, true);
        quote!(__sink.output(#v);)
    } else {
        let item_enum = &names.item_enum;
        let last = arm.targets.len() - 1;
        let pushes = arm.targets.iter().enumerate().map(|(i, target)| {
            let input = names.node_input(names.node(target));
            let v = payload(
                &input,
                &quote!(::floxide::__private::arm),
                target.span(),
                i == last,
            );
            let variant = variant_name(target);
            quote! {
                let __k = __sink.next_index();
                __sink.push(#item_enum::#variant(__id.child(__k), #v));
            }
        });
        quote!(#(#pushes)*)
    };
    quote!(#pat #guard => { #body })
}

/// `Enum::Variant(_)` binds the variant's payload (as in Floxide 3.x, where `_` in the variant
/// forwards it to the successor): a tuple-variant pattern whose fields are all `_` gets a fresh
/// binding for each, in each alternative of an or-pattern. Other patterns are unchanged.
fn forward_wildcard_fields(pat: &Pat) -> Pat {
    match pat {
        Pat::TupleStruct(p)
            if !p.elems.is_empty() && p.elems.iter().all(|e| matches!(e, Pat::Wild(_))) =>
        {
            let mut p = p.clone();
            for (i, elem) in p.elems.iter_mut().enumerate() {
                let ident = Ident::new(
                    &format!("__floxide_field{i}"),
                    syn::spanned::Spanned::span(&*elem),
                );
                *elem = Pat::Ident(syn::PatIdent {
                    attrs: Vec::new(),
                    by_ref: None,
                    mutability: None,
                    ident,
                    subpat: None,
                });
            }
            Pat::TupleStruct(p)
        }
        Pat::Or(p) => {
            let mut p = p.clone();
            for case in p.cases.iter_mut() {
                *case = forward_wildcard_fields(case);
            }
            Pat::Or(p)
        }
        other => other.clone(),
    }
}

/// The names a pattern binds, in order (the first alternative of an or-pattern).
fn collect_bindings(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(p) => {
            if p.subpat.is_none() && is_constant_like(&p.ident) {
                return;
            }
            out.push(p.ident.clone());
            if let Some((_, sub)) = &p.subpat {
                collect_bindings(sub, out);
            }
        }
        Pat::TupleStruct(p) => p.elems.iter().for_each(|e| collect_bindings(e, out)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| collect_bindings(&f.pat, out)),
        Pat::Tuple(p) => p.elems.iter().for_each(|e| collect_bindings(e, out)),
        Pat::Slice(p) => p.elems.iter().for_each(|e| collect_bindings(e, out)),
        Pat::Paren(p) => collect_bindings(&p.pat, out),
        Pat::Reference(p) => collect_bindings(&p.pat, out),
        Pat::Type(p) => collect_bindings(&p.pat, out),
        Pat::Or(p) => {
            if let Some(first) = p.cases.first() {
                collect_bindings(first, out);
            }
        }
        _ => {}
    }
}
