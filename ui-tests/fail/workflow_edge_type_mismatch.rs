use floxide::*;

node! {
    pub struct Render {};
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(n.to_string())) }
}

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { render: Render, inc: Inc }
    start = render;
    edges {
        render => [inc];
        inc => [];
    }
}

fn main() {
    let _ = Flow {
        render: Render {},
        inc: Inc {},
    };
}
