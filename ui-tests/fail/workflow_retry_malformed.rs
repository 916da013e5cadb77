use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow {
        #[retry(policy)]
        a: Inc,
        b: Inc,
        policy: RetryPolicy,
    }
    start = a;
    edges {
        a => [b];
        b => [];
    }
}

fn main() {
    let _ = Flow {
        a: Inc {},
        b: Inc {},
        policy: RetryPolicy::default(),
    };
}
