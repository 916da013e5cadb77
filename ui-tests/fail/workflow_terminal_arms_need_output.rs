use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Verdict {
    Accept(String),
    Reject(String),
}

node! {
    pub struct Judge {};
    input = u32;
    output = Verdict;
    |_ctx, n| { Ok(Transition::Next(Verdict::Accept(n.to_string()))) }
}

workflow! {
    pub struct Flow { judge: Judge }
    start = judge;
    edges {
        judge => {
            Verdict::Accept(s) => [];
            Verdict::Reject(s) => [];
        };
    }
}

fn main() {
    let _ = Flow { judge: Judge {} };
}
