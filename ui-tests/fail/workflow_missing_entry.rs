use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { a: Inc, b: Inc, c: Inc }
    start = a;
    edges {
        a => [b, c];
        b => [];
    }
}

fn main() {
    let _ = Flow {
        a: Inc {},
        b: Inc {},
        c: Inc {},
    };
}
