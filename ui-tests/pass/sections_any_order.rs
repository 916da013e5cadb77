//! `start`, `context` and `edges` may come in any order; `context` defaults to `()`.

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ctx {
    pub bonus: u32,
}

node! {
    pub struct Add {};
    context = Ctx;
    input = u32;
    output = u32;
    |ctx, n| { Ok(Transition::Next(n + ctx.bonus)) }
}

node! {
    pub struct Plain {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n * 2)) }
}

workflow! {
    pub struct EdgesFirst { a: Add, b: Add }
    edges {
        a => [b];
        b => [];
    }
    context = Ctx;
    start = a;
}

workflow! {
    pub struct ContextFirst { a: Add, b: Add }
    context = Ctx;
    edges {
        a => [b];
        b => [];
    }
    start = a;
}

workflow! {
    pub struct StartLast { a: Add, b: Add }
    edges {
        a => [b];
        b => [];
    }
    start = a;
    context = Ctx;
}

workflow! {
    pub struct NoContext { a: Plain }
    edges { a => []; }
    start = a;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let ctx = WorkflowCtx::new(Ctx { bonus: 5 });
    let (a, b) = (Add {}, Add {});
    assert_eq!(
        EdgesFirst {
            a: a.clone(),
            b: b.clone()
        }
        .run(&ctx, 1)
        .await
        .unwrap(),
        11
    );
    assert_eq!(
        ContextFirst {
            a: a.clone(),
            b: b.clone()
        }
        .run(&ctx, 1)
        .await
        .unwrap(),
        11
    );
    assert_eq!(StartLast { a, b }.run(&ctx, 1).await.unwrap(), 11);
    assert_eq!(
        NoContext { a: Plain {} }
            .run(&WorkflowCtx::new(()), 4)
            .await
            .unwrap(),
        8
    );
}
