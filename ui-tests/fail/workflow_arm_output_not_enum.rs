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
    pub struct Flow { decide: Inc, left: Inc, right: Inc }
    start = decide;
    edges {
        decide => {
            Choice::Left(x) => [left];
            Choice::Right(x) => [right];
        };
        left => [];
        right => [];
    }
}

fn main() {
    let _ = Flow {
        decide: Inc {},
        left: Inc {},
        right: Inc {},
    };
}
