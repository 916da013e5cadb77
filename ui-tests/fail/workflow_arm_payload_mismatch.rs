use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Choice {
    Number(u32),
    Text(String),
}

node! {
    pub struct Decide {};
    input = u32;
    output = Choice;
    |_ctx, n| { Ok(Transition::Next(Choice::Number(n))) }
}

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { decide: Decide, number: Inc, text: Inc }
    start = decide;
    edges {
        decide => {
            Choice::Number(n) => [number];
            Choice::Text(s) => [text];
        };
        number => [];
        text => [];
    }
}

fn main() {
    let _ = Flow {
        decide: Decide {},
        number: Inc {},
        text: Inc {},
    };
}
