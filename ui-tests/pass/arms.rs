//! Branching on an enum output: variant arms with bindings (one, several, struct-like),
//! unit variants, guards, the wildcard, and terminal arms (with `output = Type;`, as the
//! only terminals are arms).

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    Left(u32),
    Right(u32),
    Pair(u32, String),
    Named {
        code: u32,
    },
    #[default]
    Unit,
    Done(String),
    Other(i64),
}

node! {
    pub struct Classify {};
    input = i64;
    output = Choice;
    |_ctx, n| {
        Ok(Transition::Next(match n {
            0 => Choice::Unit,
            1..=9 => Choice::Left(n as u32),
            10..=19 => Choice::Right(n as u32),
            20..=29 => Choice::Pair(n as u32, "p".into()),
            30..=39 => Choice::Named { code: n as u32 },
            40..=49 => Choice::Done(format!("done {n}")),
            _ => Choice::Other(n),
        }))
    }
}

node! {
    pub struct Show { tag: &'static str };
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("{}:{n}", self.tag))) }
}

node! {
    pub struct ShowPair {};
    input = (u32, String);
    output = String;
    |_ctx, (n, s)| { Ok(Transition::Next(format!("pair:{n}{s}"))) }
}

node! {
    pub struct ShowRest {};
    input = Choice;
    output = String;
    |_ctx, c| { Ok(Transition::Next(format!("rest:{c:?}"))) }
}

workflow! {
    pub struct Branchy {
        classify: Classify,
        left: Show,
        big: Show,
        right: Show,
        unit: Show,
        named: Show,
        pair: ShowPair,
        rest: ShowRest,
    }
    start = classify;
    edges {
        classify => {
            Choice::Left(x) => [left];
            Choice::Right(x) if x > 15 => [big];
            Choice::Right(x) => [right];
            Choice::Unit => [unit];
            Choice::Pair(a, b) => [pair];
            Choice::Named { code } => [named];
            Choice::Done(s) => [];
            _ => [rest];
        };
        left => [];
        big => [];
        right => [];
        unit => [];
        named => [];
        pair => [];
        rest => [];
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Verdict {
    Accept(String),
    Reject(String),
    Retry(u32),
}

node! {
    pub struct Judge {};
    input = u32;
    output = Verdict;
    |_ctx, n| {
        Ok(Transition::Next(match n {
            0 => Verdict::Reject("zero".into()),
            1..=9 => Verdict::Retry(n * 10),
            _ => Verdict::Accept(format!("ok {n}")),
        }))
    }
}

// The only terminals are arms, so the output type is given with `output = Type;`.
workflow! {
    pub struct Judged {
        first: Judge,
        second: Judge,
    }
    start = first;
    output = String;
    edges {
        first => {
            Verdict::Accept(s) | Verdict::Reject(s) => [];
            Verdict::Retry(n) => [second];
        };
        second => {
            Verdict::Accept(s) => [];
            Verdict::Reject(s) => [];
            Verdict::Retry(n) => [first];
        };
    }
}

fn branchy() -> Branchy {
    Branchy {
        classify: Classify {},
        left: Show { tag: "left" },
        big: Show { tag: "big" },
        right: Show { tag: "right" },
        unit: Show { tag: "unit" },
        named: Show { tag: "named" },
        pair: ShowPair {},
        rest: ShowRest {},
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let wf = branchy();
    let ctx = WorkflowCtx::new(());
    assert_eq!(wf.run(&ctx, 3).await.unwrap(), "left:3");
    assert_eq!(wf.run(&ctx, 12).await.unwrap(), "right:12");
    assert_eq!(wf.run(&ctx, 17).await.unwrap(), "big:17");
    assert_eq!(wf.run(&ctx, 0).await.unwrap(), "unit:0");
    assert_eq!(wf.run(&ctx, 21).await.unwrap(), "pair:21p");
    assert_eq!(wf.run(&ctx, 33).await.unwrap(), "named:33");
    assert_eq!(wf.run(&ctx, 44).await.unwrap(), "done 44");
    assert_eq!(wf.run(&ctx, 50).await.unwrap(), "rest:Other(50)");

    let judged = Judged {
        first: Judge {},
        second: Judge {},
    };
    assert_eq!(judged.run(&ctx, 12).await.unwrap(), "ok 12");
    assert_eq!(judged.run(&ctx, 0).await.unwrap(), "zero");
    assert_eq!(judged.run(&ctx, 3).await.unwrap(), "ok 30");
}
