use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

node! {
    pub struct Apologize {};
    input = String;
    output = u32;
    |_ctx, _s| { Ok(Transition::Next(0)) }
}

workflow! {
    pub struct Flow { a: Inc, sorry: Apologize }
    start = a;
    edges {
        a => [];
        a on_failure => [sorry];
        sorry => [];
    }
}

fn main() {
    let _ = Flow {
        a: Inc {},
        sorry: Apologize {},
    };
}
