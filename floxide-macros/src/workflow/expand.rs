//! Code generation: the items user code refers to, the trait impls of a validated workflow,
//! and the fallback impls emitted next to the errors of an invalid one.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{Ident, Pat, Type};

use super::ast::{variant_name, ArmDef, EdgeBody, FieldDef, WorkflowDef};
use super::graph;
use super::validate::is_constant_like;
use crate::errors::closest;

mod step;

use step::step_arm;

/// Names shared by the generated items.
struct Names<'a> {
    def: &'a WorkflowDef,
    ctx: Type,
    item_enum: Ident,
}

impl<'a> Names<'a> {
    fn new(def: &'a WorkflowDef) -> Self {
        Names {
            def,
            ctx: def.context.clone().unwrap_or_else(|| syn::parse_quote!(())),
            item_enum: format_ident!("{}WorkItem", def.ident),
        }
    }

    fn node_input(&self, node: &FieldDef) -> TokenStream {
        let (ty, ctx) = (&node.ty, &self.ctx);
        quote!(<#ty as ::floxide::Node<#ctx>>::Input)
    }

    fn node_output(&self, node: &FieldDef) -> TokenStream {
        let (ty, ctx) = (&node.ty, &self.ctx);
        quote!(<#ty as ::floxide::Node<#ctx>>::Output)
    }

    /// The node field named `name` (validated to exist).
    fn node(&self, name: &Ident) -> &'a FieldDef {
        self.def
            .field(name)
            .unwrap_or_else(|| unreachable!("validated: `{name}` is a node"))
    }

    /// The workflow's output type: `output = T;`, else the output of the first direct
    /// terminal (`node => [];`) whose source is a node; `None` (only in an invalid workflow)
    /// when there is neither.
    fn output_type(&self) -> Option<TokenStream> {
        if let Some(ty) = &self.def.output {
            return Some(quote!(#ty));
        }
        let terminal = self.def.edges.iter().find(|e| {
            e.on_failure.is_none()
                && matches!(&e.body, EdgeBody::Direct(t) if t.is_empty())
                && self.def.is_node(&e.source)
        })?;
        Some(self.node_output(self.node(&terminal.source)))
    }

    /// The input type of an invalid workflow: the start node's input (or that of the node a
    /// misspelt start most likely means), else the first node's input, else `()`.
    fn fallback_input(&self) -> TokenStream {
        let nodes = self.def.nodes();
        let names: Vec<String> = nodes.iter().map(|n| n.ident.to_string()).collect();
        let start = self.def.start.as_ref().and_then(|(_, start)| {
            let name = closest(&start.to_string(), names.iter().map(String::as_str))?;
            nodes.iter().find(|n| n.ident == name)
        });
        match start.or(nodes.first()) {
            Some(node) => self.node_input(node),
            None => quote!(()),
        }
    }
}

/// The struct and the work-item enum: what user code refers to. Emitted even when
/// validation failed, so that the real errors are not buried under unresolved names.
pub fn expand_items(def: &WorkflowDef) -> TokenStream {
    let names = Names::new(def);
    let WorkflowDef {
        attrs, vis, ident, ..
    } = def;
    let fields = def.fields.iter().map(|f| {
        let (fattrs, fident, fty) = (&f.attrs, &f.ident, &f.ty);
        quote!(#(#fattrs)* pub #fident: #fty,)
    });
    let item_enum = &names.item_enum;
    let variants = def.nodes().into_iter().map(|node| {
        let variant = variant_name(&node.ident);
        let input = names.node_input(node);
        let doc = format!(
            "A pending execution of node `{}`: the item's id and the node's input.",
            node.ident
        );
        quote!(#[doc = #doc] #variant(::floxide::ItemId, #input),)
    });
    let enum_doc = format!("The work items of workflow [`{ident}`]: one variant per node.");
    quote! {
        #(#attrs)*
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #vis struct #ident {
            #(#fields)*
        }

        #[doc = #enum_doc]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::floxide::__private::serde::Serialize,
            ::floxide::__private::serde::Deserialize
        )]
        #[serde(crate = "::floxide::__private::serde")]
        #vis enum #item_enum {
            #(#variants)*
        }
    }
}

/// `WorkItem`, `Display` and `PartialEq` for the work-item enum. They depend only on the node
/// list and entries, so a workflow that failed validation gets the same impls.
fn work_item_impl(names: &Names) -> TokenStream {
    let item_enum = &names.item_enum;
    let nodes = names.def.nodes();
    let variants: Vec<Ident> = nodes.iter().map(|n| variant_name(&n.ident)).collect();
    let node_strs: Vec<String> = nodes.iter().map(|n| n.ident.to_string()).collect();
    let variant_strs: Vec<String> = variants.iter().map(Ident::to_string).collect();
    let terminals: Vec<&Ident> = nodes
        .iter()
        .zip(&variants)
        .filter(|(n, _)| {
            names
                .def
                .entry(&n.ident)
                .is_some_and(|e| e.body.has_terminal())
        })
        .map(|(_, v)| v)
        .collect();
    let inputs: Vec<TokenStream> = nodes.iter().map(|n| names.node_input(n)).collect();
    quote! {
        #[automatically_derived]
        impl ::floxide::WorkItem for #item_enum {
            fn instance_id(&self) -> ::floxide::ItemId {
                match *self { #(#item_enum::#variants(id, _) => id,)* }
            }
            fn node_name(&self) -> &'static str {
                match *self { #(#item_enum::#variants(..) => #node_strs,)* }
            }
            fn is_terminal(&self) -> bool {
                #[allow(unreachable_patterns)]
                match *self {
                    #(#item_enum::#terminals(..) => true,)*
                    _ => false,
                }
            }
        }

        /// The node's variant and its input, as in Floxide 3.x: `Greet("ada")`.
        #[automatically_derived]
        impl ::core::fmt::Display for #item_enum {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match *self {
                    #(#item_enum::#variants(_, ref input) => {
                        ::core::write!(f, "{}({:?})", #variant_strs, input)
                    })*
                }
            }
        }

        /// Equal items: same node, id and input. Usable when every node input is `PartialEq`.
        #[automatically_derived]
        impl ::core::cmp::PartialEq for #item_enum
        where
            #(for<'__floxide> #inputs: ::core::cmp::PartialEq,)*
        {
            fn eq(&self, other: &Self) -> bool {
                #[allow(unreachable_patterns)]
                match (self, other) {
                    #((#item_enum::#variants(a, x), #item_enum::#variants(b, y)) => a == b && x == y,)*
                    _ => false,
                }
            }
        }
    }
}

/// The expression building the workflow's `floxide_core::WorkflowGraph`: nodes with their type names
/// (known only once types are resolved: `type_name` at run time), edges with their kinds.
fn graph_data(names: &Names<'_>, workflow: &str, start: &str) -> TokenStream {
    let nodes = names.def.nodes().into_iter().map(|node| {
        let name = node.ident.to_string();
        let written = graph::type_text(&node.ty);
        let (input, output) = (names.node_input(node), names.node_output(node));
        let retried = node.retry.is_some();
        quote! {
            .with_node(
                #name,
                #written,
                ::core::any::type_name::<#input>(),
                ::core::any::type_name::<#output>(),
                #retried,
            )
        }
    });
    let edges = graph::edges(names.def).into_iter().map(|edge| {
        let from = &edge.from;
        let to = match &edge.to {
            Some(to) => quote!(::core::option::Option::Some(#to)),
            None => quote!(::core::option::Option::None),
        };
        let kind = match (&edge.to, &edge.label, edge.failure) {
            (_, _, true) => quote!(::floxide::EdgeKind::OnFailure),
            (Some(_), Some(pattern), false) => {
                quote!(::floxide::EdgeKind::Arm { pattern: ::std::string::String::from(#pattern) })
            }
            (Some(_), None, false) => quote!(::floxide::EdgeKind::Direct),
            (None, Some(pattern), false) => quote!(::floxide::EdgeKind::Terminal {
                pattern: ::core::option::Option::Some(::std::string::String::from(#pattern))
            }),
            (None, None, false) => {
                quote!(::floxide::EdgeKind::Terminal {
                    pattern: ::core::option::Option::None
                })
            }
        };
        quote!(.with_edge(#from, #to, #kind))
    });
    quote! {
        ::floxide::WorkflowGraph::new(#workflow, #start)
            #(#nodes)*
            #(#edges)*
    }
}

/// The trait implementations of a validated workflow.
pub fn expand_impls(def: &WorkflowDef) -> TokenStream {
    let names = Names::new(def);
    let ident = &def.ident;
    let name_str = ident.to_string();
    let ctx = &names.ctx;
    let item_enum = &names.item_enum;
    let Some((_, start)) = &def.start else {
        unreachable!("validated: start exists")
    };
    let start_node = names.node(start);
    let start_variant = variant_name(start);
    let start_input = names.node_input(start_node);
    let start_str = start.to_string();
    let output = names
        .output_type()
        .unwrap_or_else(|| unreachable!("validated: the output type is known"));

    let work_item = work_item_impl(&names);
    let step_arms = def
        .nodes()
        .into_iter()
        .map(|n| step_arm(&names, n, &output));
    let node_names: Vec<String> = def.nodes().iter().map(|n| n.ident.to_string()).collect();
    let dot = graph::dot(def);
    let mermaid = graph::mermaid(def);
    let graph_data = graph_data(&names, &name_str, &start_str);
    let inherent = inherent_impl(ident, &node_names);

    quote! {
        #work_item

        #[automatically_derived]
        impl ::floxide::Workflow<#ctx> for #ident {
            type Input = #start_input;
            type Output = #output;
            type WorkItem = #item_enum;

            fn name(&self) -> &'static str {
                #name_str
            }

            fn start_node(&self) -> &'static str {
                #start_str
            }

            fn start_work_item(&self, input: Self::Input) -> #item_enum {
                #item_enum::#start_variant(::floxide::ItemId::ROOT, input)
            }

            #[allow(unused_variables, unused_mut, clippy::redundant_clone, clippy::needless_return)]
            fn process_work_item<'__a>(
                &'__a self,
                __ctx: &'__a #ctx,
                __item: #item_enum,
                __env: ::floxide::StepEnv,
                __sink: &'__a mut ::floxide::StepSink<#item_enum, #output>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::floxide::StepFailure>,
            > + ::core::marker::Send + '__a {
                async move {
                    match __item {
                        #(#step_arms)*
                    }
                    ::core::result::Result::Ok(())
                }
            }

            fn to_dot(&self) -> &'static str {
                #dot
            }

            fn to_mermaid(&self) -> &'static str {
                #mermaid
            }

            fn graph(&self) -> ::floxide::WorkflowGraph {
                #graph_data
            }

            fn node_names(&self) -> &'static [&'static str] {
                Self::NODE_NAMES
            }
        }

        #inherent
    }
}

/// The workflow's own items: its node names and its worker and orchestrator builders.
fn inherent_impl(ident: &Ident, node_names: &[String]) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl #ident {
            /// The names of this workflow's nodes, in declaration order (the work-item tags).
            pub const NODE_NAMES: &'static [&'static str] = &[#(#node_names),*];

            /// A worker builder for this workflow on `backend`: add settings, then `.build()`.
            #[allow(dead_code)]
            pub fn worker<__C>(
                &self,
                backend: impl ::floxide::distributed::Backend,
            ) -> ::floxide::distributed::WorkerBuilder<Self, __C>
            where
                __C: ::floxide::Context + ::floxide::Merge + 'static,
                Self: ::floxide::Workflow<__C>,
            {
                ::floxide::distributed::WorkerBuilder::new()
                    .workflow(::core::clone::Clone::clone(self))
                    .backend(backend)
            }

            /// An orchestrator builder for this workflow on `backend`: `.build()` it.
            #[allow(dead_code)]
            pub fn orchestrator<__C>(
                &self,
                backend: impl ::floxide::distributed::Backend,
            ) -> ::floxide::distributed::OrchestratorBuilder<Self, __C>
            where
                __C: ::floxide::Context + ::floxide::Merge + 'static,
                Self: ::floxide::Workflow<__C>,
            {
                ::floxide::distributed::OrchestratorBuilder::new()
                    .workflow(::core::clone::Clone::clone(self))
                    .backend(backend)
            }
        }
    }
}

/// The trait implementations of a workflow that failed validation, emitted next to its
/// errors so that user code calling `run`, `to_dot`, .. reports nothing more.
///
/// The program never compiles, so the bodies are unreachable; only the associated types
/// matter. They are the best guess at what the valid workflow will have (`()` when there is
/// none), so that user code typed against it does not produce type errors either.
pub fn expand_fallback_impls(def: &WorkflowDef) -> TokenStream {
    let names = Names::new(def);
    let ident = &def.ident;
    let ctx = &names.ctx;
    let item_enum = &names.item_enum;
    let input = names.fallback_input();
    let output = names.output_type().unwrap_or_else(|| quote!(()));
    let work_item = work_item_impl(&names);
    let unreachable = quote!(::core::unreachable!("workflow failed to compile"));

    quote! {
        #work_item

        #[automatically_derived]
        impl ::floxide::Workflow<#ctx> for #ident {
            type Input = #input;
            type Output = #output;
            type WorkItem = #item_enum;

            fn name(&self) -> &'static str {
                #unreachable
            }

            fn start_node(&self) -> &'static str {
                #unreachable
            }

            fn start_work_item(&self, _: Self::Input) -> #item_enum {
                #unreachable
            }

            fn process_work_item<'__a>(
                &'__a self,
                _: &'__a #ctx,
                _: #item_enum,
                _: ::floxide::StepEnv,
                _: &'__a mut ::floxide::StepSink<#item_enum, #output>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::floxide::StepFailure>,
            > + ::core::marker::Send + '__a {
                async { #unreachable }
            }

            fn to_dot(&self) -> &'static str {
                #unreachable
            }

            fn to_mermaid(&self) -> &'static str {
                #unreachable
            }
        }
    }
}
