use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { a: Inc, b: Inc }
    start = a;
}

fn main() {
    let _ = Flow {
        a: Inc {},
        b: Inc {},
    };
}
