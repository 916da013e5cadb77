use floxide::*;

node! {
    pub struct Inc {};
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

fn main() {
    let _ = Inc {};
}
