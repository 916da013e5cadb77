use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Choice {
    Value(u32),
    Nothing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub id: u32,
}

node! {
    pub struct Decide {};
    input = u32;
    output = Choice;
    |_ctx, n| { Ok(Transition::Next(Choice::Value(n))) }
}

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

node! {
    pub struct Open {};
    input = Ticket;
    output = u32;
    |_ctx, t| { Ok(Transition::Next(t.id)) }
}

workflow! {
    pub struct Flow { decide: Decide, value: Inc, open: Open }
    start = decide;
    edges {
        decide => {
            Choice::Value(n) => [value];
            _ => [open];
        };
        value => [];
        open => [];
    }
}

fn main() {}
