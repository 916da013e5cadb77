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

fn main() {
    let _ = Flow {
        first: Inc {},
        second: Inc {},
    };
}
