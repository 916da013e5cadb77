use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Choice {
    Left(u32),
    Right(u32),
}

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
        a => [b];
        a on_failure => {
            Choice::Left(x) => [b];
            Choice::Right(x) => [c];
        };
        b => [];
        c => [];
    }
}

fn main() {
    let _ = Flow {
        a: Inc {},
        b: Inc {},
        c: Inc {},
    };
}
