//! `use floxide::*;` is the only import a user needs (serde derives aside, for their own
//! types): the macros' expansions name nothing else.

use floxide::*;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, Merge)]
pub struct Ctx {
    pub seen: Fixed<u32>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub enum Sign {
    Positive(i32),
    Negative(i32),
    #[default]
    Zero,
}

node! {
    pub struct Classify {};
    context = Ctx;
    input = i32;
    output = Sign;
    |_ctx, n| {
        Ok(Transition::Next(match n {
            0 => Sign::Zero,
            n if n > 0 => Sign::Positive(n),
            n => Sign::Negative(n),
        }))
    }
}

node! {
    pub struct Abs {};
    context = Ctx;
    input = i32;
    output = i32;
    |_ctx, n| { Ok(Transition::Next(n.abs())) }
}

node! {
    pub struct Fail {};
    context = Ctx;
    input = i32;
    output = i32;
    |_ctx, _n| { Err(FloxideError::Generic("no".into())) }
}

/// A node written by hand, with the re-exported `async_trait`.
#[derive(Debug, Clone)]
pub struct Negate;

#[async_trait]
impl Node<Ctx> for Negate {
    type Input = i32;
    type Output = i32;
    async fn process(&self, _ctx: &Ctx, n: i32) -> Result<Transition<i32>, FloxideError> {
        Ok(Transition::Next(-n))
    }
}

workflow! {
    pub struct Signs {
        classify: Classify,
        positive: Negate,
        #[retry = policy]
        negative: Fail,
        abs: Abs,
        zero: Abs,
        policy: RetryPolicy,
    }
    start = classify;
    context = Ctx;
    edges {
        classify => {
            Sign::Positive(n) if n > 100 => [abs];
            Sign::Positive(n) => [positive];
            Sign::Negative(n) => [negative];
            Sign::Zero => [zero];
        };
        positive => [];
        negative => [];
        negative on_failure => [abs];
        abs => [];
        zero => {};
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let wf = Signs {
        classify: Classify {},
        positive: Negate,
        negative: Fail {},
        abs: Abs {},
        zero: Abs {},
        policy: RetryPolicy::default(),
    };
    let ctx = WorkflowCtx::new(Ctx::default());
    assert_eq!(wf.run(&ctx, 5).await.unwrap(), -5);
    assert_eq!(wf.run(&ctx, 500).await.unwrap(), 500);
    assert_eq!(wf.run(&ctx, -5).await.unwrap(), 5);
    assert_eq!(wf.run(&ctx, 0).await.unwrap(), 0);
    assert!(wf.to_dot().starts_with("digraph Signs"));
    assert!(wf.to_mermaid().starts_with("flowchart"));
    let mut a = Ctx::default();
    a.merge(Ctx {
        seen: Fixed::new(1),
    });
    assert_eq!(*a.seen.get(), 1);
}
