//! The typed model of a `workflow!` invocation.

use proc_macro2::Span;
use syn::{Attribute, Expr, Ident, Pat, Type, Visibility};

/// A whole `workflow! { ... }`.
pub struct WorkflowDef {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub fields: Vec<FieldDef>,
    /// Fields left out of `fields` because an earlier field has their name or their
    /// work-item variant: validation reports them, and expansion never sees them (two fields
    /// of one name would bury that report under duplicate-definition errors).
    pub clashing_fields: Vec<FieldClash>,
    /// `start = a;`: the keyword's span and the node.
    pub start: Option<(Span, Ident)>,
    /// `context = Ctx;`
    pub context: Option<Type>,
    /// `output = Type;` (optional; inferred from the first direct terminal otherwise)
    pub output: Option<Type>,
    /// The `edges` keyword, when present.
    pub edges_kw: Option<Ident>,
    pub edges: Vec<EdgeEntry>,
}

/// One field of the workflow struct: a node, or a retry policy named by `#[retry = ..]`.
pub struct FieldDef {
    /// Attributes passed through to the generated struct (docs, lints).
    pub attrs: Vec<Attribute>,
    pub ident: Ident,
    pub ty: Type,
    pub retry: Option<RetryAttr>,
}

/// A field whose name or work-item variant is already taken by `earlier`.
pub struct FieldClash {
    pub field: Ident,
    pub earlier: Ident,
}

/// `#[retry = policy]` on a node field.
pub struct RetryAttr {
    /// The whole attribute, for error spans.
    pub attr: Attribute,
    /// The field holding the policy, once well-formed.
    pub policy: Option<Ident>,
}

/// One entry of `edges { ... }`.
pub struct EdgeEntry {
    pub source: Ident,
    /// `Some` for `source on_failure => ...`.
    pub on_failure: Option<Ident>,
    pub body: EdgeBody,
}

/// What follows `=>` in an entry.
pub enum EdgeBody {
    /// `[b, c]`, `{ [b, c] }`, `[]` or `{}`.
    Direct(Vec<Ident>),
    /// `{ Enum::Variant(x) => [b]; ... }`.
    Arms(Vec<ArmDef>),
}

/// One arm of a branching entry.
pub struct ArmDef {
    pub pat: Pat,
    pub guard: Option<Expr>,
    pub targets: Vec<Ident>,
}

impl WorkflowDef {
    /// The field named `name`.
    pub fn field(&self, name: &Ident) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.ident == *name)
    }

    /// Names of the fields that `#[retry = ..]` attributes point at: they are not nodes.
    pub fn policy_names(&self) -> Vec<&Ident> {
        self.fields
            .iter()
            .filter_map(|f| f.retry.as_ref().and_then(|r| r.policy.as_ref()))
            .collect()
    }

    /// Whether `field` holds a retry policy: a `#[retry = ..]` names it, or its type is
    /// `RetryPolicy` (so a typo in the attribute does not turn the policy into a node).
    pub fn is_policy(&self, field: &FieldDef) -> bool {
        field.has_policy_type() || self.policy_names().contains(&&field.ident)
    }

    /// The fields that are nodes, in declaration order.
    pub fn nodes(&self) -> Vec<&FieldDef> {
        self.fields.iter().filter(|f| !self.is_policy(f)).collect()
    }

    /// Whether `name` is a node of this workflow.
    pub fn is_node(&self, name: &Ident) -> bool {
        self.field(name).is_some_and(|f| !self.is_policy(f))
    }

    /// Whether `name` is a field left out of the model for clashing with an earlier one.
    pub fn is_clashing(&self, name: &Ident) -> bool {
        self.clashing_fields.iter().any(|c| c.field == *name)
    }

    /// The normal (not `on_failure`) entry of `node`.
    pub fn entry(&self, node: &Ident) -> Option<&EdgeEntry> {
        self.edges
            .iter()
            .find(|e| e.on_failure.is_none() && e.source == *node)
    }

    /// The `on_failure` entry of `node`.
    pub fn failure_entry(&self, node: &Ident) -> Option<&EdgeEntry> {
        self.edges
            .iter()
            .find(|e| e.on_failure.is_some() && e.source == *node)
    }
}

impl FieldDef {
    /// Whether the field's type is written `RetryPolicy` (or `path::to::RetryPolicy`).
    pub fn has_policy_type(&self) -> bool {
        match &self.ty {
            Type::Path(p) if p.qself.is_none() => p
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "RetryPolicy" && s.arguments.is_none()),
            _ => false,
        }
    }
}

impl EdgeBody {
    /// Every successor named in this body.
    pub fn targets(&self) -> Vec<&Ident> {
        match self {
            EdgeBody::Direct(t) => t.iter().collect(),
            EdgeBody::Arms(arms) => arms.iter().flat_map(|a| a.targets.iter()).collect(),
        }
    }

    /// Whether this body ends the workflow somewhere (an empty list or an empty arm).
    pub fn has_terminal(&self) -> bool {
        match self {
            EdgeBody::Direct(t) => t.is_empty(),
            EdgeBody::Arms(arms) => arms.iter().any(|a| a.targets.is_empty()),
        }
    }
}

/// `my_node` → `MyNode`: the work-item variant of a node.
pub fn variant_name(field: &Ident) -> Ident {
    let mut out = String::new();
    for part in field.to_string().trim_start_matches("r#").split('_') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    if out.is_empty() {
        out.push_str("Node");
    }
    Ident::new(&out, field.span())
}
