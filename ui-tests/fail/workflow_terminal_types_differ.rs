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
    pub struct Flow { a: Inc, number: Inc, text: Render }
    start = a;
    edges {
        a => [number, text];
        number => [];
        text => [];
    }
}

fn main() {
    let _ = Flow {
        a: Inc {},
        number: Inc {},
        text: Render {},
    };
}
