//! Direct edges: fan-out `a => [b, c]`, the older `a => { [b, c] }` form, and the terminals
//! `c => [];` and `c => {};`.

use std::collections::BTreeSet;

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Visits {
    pub seen: SharedState<BTreeSet<String>>,
}

node! {
    pub struct Step { name: &'static str, add: u32 };
    context = Visits;
    input = u32;
    output = u32;
    |ctx, n| {
        ctx.seen.update(|seen| seen.insert(self.name.to_owned())).await;
        Ok(Transition::Next(n + self.add))
    }
}

workflow! {
    pub struct FanOut {
        split: Step,
        left: Step,
        right: Step,
        left_end: Step,
        right_end: Step,
    }
    start = split;
    context = Visits;
    edges {
        split => [left, right];
        left => { [left_end] };
        right => [right_end];
        left_end => [];
        right_end => {};
    }
}

workflow! {
    pub struct OldFanOut {
        split: Step,
        left: Step,
        right: Step,
    }
    start = split;
    context = Visits;
    edges {
        split => { [left, right] };
        left => {};
        right => {};
    }
}

fn step(name: &'static str, add: u32) -> Step {
    Step { name, add }
}

#[tokio::main]
async fn main() {
    let wf = FanOut {
        split: step("split", 1),
        left: step("left", 10),
        right: step("right", 100),
        left_end: step("left_end", 1000),
        right_end: step("right_end", 10000),
    };
    let ctx = WorkflowCtx::new(Visits::default());
    let out = wf.run(&ctx, 0).await.unwrap();
    // Both branches run; the first terminal output produced is returned.
    assert!(out == 1011 || out == 10101, "unexpected output {out}");
    let seen = ctx.store.seen.snapshot().await;
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["left", "left_end", "right", "right_end", "split"]
    );
    assert_eq!(wf.name(), "FanOut");

    let old = OldFanOut {
        split: step("split", 1),
        left: step("left", 10),
        right: step("right", 100),
    };
    let ctx = WorkflowCtx::new(Visits::default());
    let out = old.run(&ctx, 0).await.unwrap();
    assert!(out == 11 || out == 101, "unexpected output {out}");
    assert_eq!(ctx.store.seen.snapshot().await.len(), 3);
}
