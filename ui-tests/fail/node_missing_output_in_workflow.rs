use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

node! {
    pub struct Double {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n * 2)) }
}

// `Inc` still implements `Node`: only its missing output is reported, not the workflow's
// uses of it.
workflow! {
    pub struct Flow { inc: Inc, double: Double, last: Inc }
    start = inc;
    edges {
        inc => [double];
        double => [last];
        last => [];
    }
}

#[tokio::main]
async fn main() {
    let wf = Flow {
        inc: Inc {},
        double: Double {},
        last: Inc {},
    };
    let ctx = WorkflowCtx::new(());
    let out: u32 = wf.run(&ctx, 1).await.unwrap();
    println!("{out}");
}
