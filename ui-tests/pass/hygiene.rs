//! Two workflows in one module, with the same node and edge names, do not collide.

use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

node! {
    pub struct Render {};
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(n.to_string())) }
}

workflow! {
    pub struct First {
        start: Inc,
        next: Inc,
        done: Render,
    }
    start = start;
    edges {
        start => [next];
        next => [done];
        done => [];
    }
}

workflow! {
    pub struct Second {
        start: Inc,
        next: Inc,
        done: Inc,
    }
    start = start;
    edges {
        start => [next];
        next => [done];
        done => [];
    }
}

// A third one whose field names match the hidden names of the generated code.
workflow! {
    struct Third {
        input: Inc,
        id: Inc,
        ctx: Inc,
        output: Render,
    }
    start = input;
    edges {
        input => [id];
        id => [ctx];
        ctx => [output];
        output => [];
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let ctx = WorkflowCtx::new(());
    let first = First {
        start: Inc {},
        next: Inc {},
        done: Render {},
    };
    let second = Second {
        start: Inc {},
        next: Inc {},
        done: Inc {},
    };
    let third = Third {
        input: Inc {},
        id: Inc {},
        ctx: Inc {},
        output: Render {},
    };
    assert_eq!(first.run(&ctx, 1).await.unwrap(), "3");
    assert_eq!(second.run(&ctx, 1).await.unwrap(), 4);
    assert_eq!(third.run(&ctx, 1).await.unwrap(), "4");
    // Each workflow has its own work-item type.
    let _: FirstWorkItem = first.start_work_item(1);
    let _: SecondWorkItem = second.start_work_item(1);
    let _: ThirdWorkItem = third.start_work_item(1);
}
