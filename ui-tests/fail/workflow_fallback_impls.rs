use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { first: Inc, second: Inc }
    start = first;
    edges {
        first => [second, thrid];
        second => [];
    }
}

// The workflow's trait impls are still generated: only the unknown successor is reported,
// not `run` and `to_dot` as missing methods.
#[tokio::main]
async fn main() {
    let wf = Flow {
        first: Inc {},
        second: Inc {},
    };
    let ctx = WorkflowCtx::new(());
    let out: u32 = wf.run(&ctx, 1).await.unwrap();
    println!("{out} {}", wf.to_dot());
}
