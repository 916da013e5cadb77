//! The rules a workflow must follow, one `check_*` function each.
//!
//! Every rule records its errors in [`Errors`] (spanned on the user's tokens, saying what is
//! wrong and how to fix it) and lets the others run, so a user sees all problems at once.

use std::collections::{BTreeSet, VecDeque};

use syn::{Ident, Pat};

use super::ast::{variant_name, EdgeBody, FieldClash, WorkflowDef};
use crate::errors::{closest, did_you_mean, Errors};

/// Runs every rule.
pub fn validate(def: &WorkflowDef, errors: &mut Errors) {
    check_fields(def, errors);
    check_retry_attrs(def, errors);
    check_unused_policies(def, errors);
    check_start(def, errors);
    check_edges_present(def, errors);
    check_endpoints(def, errors);
    check_duplicate_entries(def, errors);
    check_missing_entries(def, errors);
    check_duplicate_targets(def, errors);
    check_failure_entries(def, errors);
    check_arm_patterns(def, errors);
    check_terminal_exists(def, errors);
    check_output_inferable(def, errors);
    check_reachable(def, errors);
}

/// Field names are unique and map to distinct work-item variants.
fn check_fields(def: &WorkflowDef, errors: &mut Errors) {
    for FieldClash { field, earlier } in &def.clashing_fields {
        if field == earlier {
            errors.spanned(
                field,
                format!("field `{field}` is declared twice; give each node its own name"),
            );
        } else {
            let variant = variant_name(field);
            errors.spanned(
                field,
                format!(
                    "nodes `{earlier}` and `{field}` both become the work-item variant \
                     `{variant}`; rename one of them"
                ),
            );
        }
    }
}

/// `#[retry = field]` is well-formed and names a field that is not a node.
fn check_retry_attrs(def: &WorkflowDef, errors: &mut Errors) {
    let policies = def.policy_names();
    for field in &def.fields {
        for extra in field.attrs.iter().filter(|a| a.path().is_ident("retry")) {
            errors.spanned(
                extra,
                "a node takes one `#[retry = policy]` attribute; remove the others",
            );
        }
        let Some(retry) = &field.retry else { continue };
        let Some(policy) = &retry.policy else {
            errors.spanned(
                &retry.attr,
                "malformed retry attribute: write `#[retry = policy]`, where `policy` is a \
                 field of this struct of type `RetryPolicy`",
            );
            continue;
        };
        if policies.contains(&&field.ident) {
            errors.spanned(
                &retry.attr,
                format!(
                    "`{}` is named by a `#[retry = ..]` attribute, so it is a retry policy, not a \
                     node, and cannot have a retry policy itself",
                    field.ident
                ),
            );
        }
        if def.field(policy).is_none() {
            let names = def
                .fields
                .iter()
                .map(|f| f.ident.to_string())
                .collect::<Vec<_>>();
            errors.spanned(
                policy,
                format!(
                    "unknown retry policy field `{policy}`: add a field `{policy}: RetryPolicy` \
                     to the workflow struct{}",
                    did_you_mean(&policy.to_string(), names.iter().map(String::as_str))
                ),
            );
        } else if *policy == field.ident {
            errors.spanned(
                policy,
                format!(
                    "node `{policy}` cannot be its own retry policy; name a `RetryPolicy` field"
                ),
            );
        }
    }
}

/// Every `RetryPolicy` field is named by a `#[retry = ..]` attribute (reported only when every
/// attribute resolved, since a malformed or misspelled one is the real error).
fn check_unused_policies(def: &WorkflowDef, errors: &mut Errors) {
    let unresolved = def.fields.iter().filter_map(|f| f.retry.as_ref()).any(|r| {
        r.policy
            .as_ref()
            .is_none_or(|policy| def.field(policy).is_none())
    });
    if unresolved {
        return;
    }
    let named = def.policy_names();
    for field in def.fields.iter().filter(|f| f.has_policy_type()) {
        if !named.contains(&&field.ident) {
            errors.spanned(
                &field.ident,
                format!(
                    "retry policy `{0}` is not used by any node: put `#[retry = {0}]` on the \
                     node it should retry, or remove the field",
                    field.ident
                ),
            );
        }
    }
}

/// `start = node;` is present and names a node.
fn check_start(def: &WorkflowDef, errors: &mut Errors) {
    match &def.start {
        None => errors.spanned(
            &def.ident,
            format!(
                "workflow `{}` has no start node: add `start = <node>;` after the struct",
                def.ident
            ),
        ),
        Some((_, start)) => {
            if !def.is_node(start) && !def.is_clashing(start) {
                errors.spanned(start, unknown_node_message(def, start, "start node"));
            }
        }
    }
}

/// An `edges { .. }` block is present.
fn check_edges_present(def: &WorkflowDef, errors: &mut Errors) {
    if def.edges_kw.is_none() {
        errors.spanned(
            &def.ident,
            format!(
                "workflow `{}` has no `edges {{ .. }}` block: list each node's successors, \
                 e.g. `edges {{ a => [b]; b => []; }}`",
                def.ident
            ),
        );
    }
}

/// Every node named in `edges` (sources and successors) is a declared node (a clashing
/// field counts as declared: `check_fields` reports it).
fn check_endpoints(def: &WorkflowDef, errors: &mut Errors) {
    for entry in &def.edges {
        if !def.is_node(&entry.source) && !def.is_clashing(&entry.source) {
            errors.spanned(
                &entry.source,
                unknown_node_message(def, &entry.source, "edge source"),
            );
        }
        for target in entry.body.targets() {
            if !def.is_node(target) && !def.is_clashing(target) {
                errors.spanned(target, unknown_node_message(def, target, "successor"));
            }
        }
    }
}

fn unknown_node_message(def: &WorkflowDef, name: &Ident, role: &str) -> String {
    let workflow = &def.ident;
    if def.field(name).is_some() {
        return format!(
            "{role} `{name}` is a retry policy field of `{workflow}`, not a node: edges connect \
             nodes only; name a node here"
        );
    }
    let nodes: Vec<String> = def.nodes().iter().map(|f| f.ident.to_string()).collect();
    let fix = match closest(&name.to_string(), nodes.iter().map(String::as_str)) {
        Some(close) => format!("did you mean `{close}`?"),
        None if nodes.is_empty() => format!("add a field `{name}: <NodeType>` to `{workflow}`"),
        None => format!(
            "add a field `{name}: <NodeType>` to `{workflow}`, or use one of its nodes: {}",
            nodes
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("unknown {role} `{name}`: `{workflow}` has no node of that name; {fix}")
}

/// Each node has at most one normal entry and at most one `on_failure` entry.
fn check_duplicate_entries(def: &WorkflowDef, errors: &mut Errors) {
    let mut seen = BTreeSet::new();
    for entry in &def.edges {
        let key = (entry.source.to_string(), entry.on_failure.is_some());
        if !seen.insert(key) {
            let kind = if entry.on_failure.is_some() {
                " on_failure"
            } else {
                ""
            };
            errors.spanned(
                &entry.source,
                format!(
                    "duplicate entry `{}{kind} => ..`: each node has exactly one{kind} entry in \
                     `edges`; merge the successor lists into one",
                    entry.source
                ),
            );
        }
    }
}

/// Every node has a normal entry (`a => [..];`, `a => [];` for a terminal).
fn check_missing_entries(def: &WorkflowDef, errors: &mut Errors) {
    if def.edges_kw.is_none() {
        return;
    }
    for node in def.nodes() {
        if def.entry(&node.ident).is_none() {
            errors.spanned(
                &node.ident,
                format!(
                    "node `{0}` has no entry in `edges`: add `{0} => [..];` with its successors, \
                     or `{0} => [];` if it ends the workflow",
                    node.ident
                ),
            );
        }
    }
}

/// No successor list names the same node twice.
fn check_duplicate_targets(def: &WorkflowDef, errors: &mut Errors) {
    let mut check = |targets: &[Ident]| {
        let mut seen = BTreeSet::new();
        for t in targets {
            if !seen.insert(t.to_string()) {
                errors.spanned(
                    t,
                    format!("`{t}` is listed twice in this successor list; remove the duplicate"),
                );
            }
        }
    };
    for entry in &def.edges {
        match &entry.body {
            EdgeBody::Direct(targets) => check(targets),
            EdgeBody::Arms(arms) => arms.iter().for_each(|a| check(&a.targets)),
        }
    }
}

/// `on_failure` entries are plain, non-empty lists.
fn check_failure_entries(def: &WorkflowDef, errors: &mut Errors) {
    for entry in &def.edges {
        let Some(kw) = &entry.on_failure else {
            continue;
        };
        match &entry.body {
            EdgeBody::Arms(_) => errors.spanned(
                kw,
                "`on_failure` takes a list of fallback nodes, not arms: `a on_failure => [fallback];`",
            ),
            EdgeBody::Direct(t) if t.is_empty() => errors.spanned(
                kw,
                "`on_failure` needs at least one fallback node: `a on_failure => [fallback];`",
            ),
            EdgeBody::Direct(_) => {}
        }
    }
}

/// Arm patterns name an enum variant (`Enum::Variant(x)`, `Enum::Unit`, `Variant{..}`) or
/// are the wildcard `_`.
fn check_arm_patterns(def: &WorkflowDef, errors: &mut Errors) {
    for entry in &def.edges {
        let EdgeBody::Arms(arms) = &entry.body else {
            continue;
        };
        for arm in arms {
            if let Err(message) = variant_pattern(&arm.pat) {
                errors.spanned(&arm.pat, message);
            }
        }
    }
}

fn variant_pattern(pat: &Pat) -> Result<(), String> {
    const HINT: &str = "an arm must match an enum variant of the node's output, like \
                        `Choice::Left(x)`, `Choice::Unit` or `Choice::Point { x, .. }`, or be `_`";
    match pat {
        Pat::Wild(_) | Pat::Path(_) | Pat::TupleStruct(_) | Pat::Struct(_) => Ok(()),
        Pat::Ident(p) if p.subpat.is_none() && is_constant_like(&p.ident) => Ok(()),
        Pat::Ident(p) => Err(format!(
            "`{}` is a plain binding, not an enum variant; {HINT} (a binding matches everything: \
             use `_` for the remaining variants)",
            p.ident
        )),
        Pat::Or(or) => or.cases.iter().try_for_each(variant_pattern),
        Pat::Paren(p) => variant_pattern(&p.pat),
        _ => Err(format!("this pattern is not an enum variant; {HINT}")),
    }
}

/// `None`, `Done`: an identifier pattern that names a unit variant or constant, not a binding.
pub fn is_constant_like(ident: &Ident) -> bool {
    ident
        .to_string()
        .starts_with(|c: char| c.is_ascii_uppercase())
}

/// At least one terminal exists (`node => [];` or an arm `=> [];`).
fn check_terminal_exists(def: &WorkflowDef, errors: &mut Errors) {
    if def.edges_kw.is_none() {
        return;
    }
    let any = def
        .edges
        .iter()
        .any(|e| e.on_failure.is_none() && e.body.has_terminal());
    if !any {
        let span_on = def.edges_kw.as_ref().unwrap_or(&def.ident);
        errors.spanned(
            span_on,
            format!(
                "workflow `{}` has no terminal node, so a run could never produce output: end at \
                 least one path with `node => [];` (or an arm `Enum::Done(x) => [];`)",
                def.ident
            ),
        );
    }
}

/// The output type is known: from `output = T;` or from a terminal `node => [];`.
fn check_output_inferable(def: &WorkflowDef, errors: &mut Errors) {
    if def.output.is_some() {
        return;
    }
    let direct = def
        .edges
        .iter()
        .any(|e| e.on_failure.is_none() && matches!(&e.body, EdgeBody::Direct(t) if t.is_empty()));
    if direct {
        return;
    }
    for entry in &def.edges {
        if let EdgeBody::Arms(arms) = &entry.body {
            if let Some(arm) = arms.iter().find(|a| a.targets.is_empty()) {
                errors.spanned(
                    &arm.pat,
                    "the workflow's output type cannot be inferred from a terminal arm: add \
                     `output = <type of this arm's binding>;` next to `start = ..;`",
                );
                return;
            }
        }
    }
}

/// Every node is reachable from the start node (through any edge, `on_failure` included).
fn check_reachable(def: &WorkflowDef, errors: &mut Errors) {
    let Some((_, start)) = &def.start else { return };
    if !def.is_node(start) || def.edges_kw.is_none() {
        return;
    }
    let mut reached = BTreeSet::new();
    let mut queue = VecDeque::from([start.to_string()]);
    while let Some(node) = queue.pop_front() {
        if !reached.insert(node.clone()) {
            continue;
        }
        for entry in def.edges.iter().filter(|e| e.source == node) {
            queue.extend(entry.body.targets().iter().map(|t| t.to_string()));
        }
    }
    for node in def.nodes() {
        if !reached.contains(&node.ident.to_string()) {
            errors.spanned(
                &node.ident,
                format!(
                    "node `{}` is unreachable from the start node `{start}`: add an edge to it, \
                     or remove it",
                    node.ident
                ),
            );
        }
    }
}
