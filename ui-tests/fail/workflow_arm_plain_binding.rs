use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Choice {
    Left(u32),
    Right(u32),
}

node! {
    pub struct Decide {};
    input = u32;
    output = Choice;
    |_ctx, n| { Ok(Transition::Next(Choice::Left(n))) }
}

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { decide: Decide, left: Inc, other: Inc }
    start = decide;
    edges {
        decide => {
            Choice::Left(x) => [left];
            x => [other];
        };
        left => [];
        other => [];
    }
}

fn main() {
    let _ = Flow {
        decide: Decide {},
        left: Inc {},
        other: Inc {},
    };
}
