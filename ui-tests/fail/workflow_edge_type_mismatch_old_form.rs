use floxide::*;

node! {
    pub struct Render {};
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(n.to_string())) }
}

node! {
    pub struct Shout {};
    input = String;
    output = String;
    |_ctx, s| { Ok(Transition::Next(s.to_uppercase())) }
}

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { render: Render, shout: Shout, inc: Inc }
    start = render;
    edges {
        render => { [shout, inc] };
        shout => [];
        inc => [render];
    }
}

fn main() {
    let _ = Flow {
        render: Render {},
        shout: Shout {},
        inc: Inc {},
    };
}
