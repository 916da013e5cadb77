//! `Transition::NextAll` from a branching node: each value is routed by its own variant.

use std::collections::BTreeSet;

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    pub values: SharedState<BTreeSet<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Part {
    Small(u32),
    Large(u32),
}

node! {
    pub struct Explode {};
    context = Seen;
    input = Vec<u32>;
    output = Part;
    |_ctx, values| {
        Ok(Transition::NextAll(
            values
                .into_iter()
                .map(|v| if v < 10 { Part::Small(v) } else { Part::Large(v) })
                .collect(),
        ))
    }
}

node! {
    pub struct Record { tag: &'static str };
    context = Seen;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.values.update(|v| v.insert(format!("{}:{n}", self.tag))).await;
        Ok(Transition::Next(n))
    }
}

workflow! {
    pub struct Explosion {
        explode: Explode,
        small: Record,
        large: Record,
    }
    start = explode;
    context = Seen;
    edges {
        explode => {
            Part::Small(n) => [small];
            Part::Large(n) => [large];
        };
        small => [];
        large => [];
    }
}

#[tokio::main]
async fn main() {
    let wf = Explosion {
        explode: Explode {},
        small: Record { tag: "small" },
        large: Record { tag: "large" },
    };
    let ctx = WorkflowCtx::new(Seen::default());
    let out = wf.run(&ctx, vec![1, 20, 3, 40]).await.unwrap();
    assert!([1, 20, 3, 40].contains(&out));
    let seen: Vec<String> = ctx.store.values.snapshot().await.into_iter().collect();
    assert_eq!(seen, ["large:20", "large:40", "small:1", "small:3"]);
}
