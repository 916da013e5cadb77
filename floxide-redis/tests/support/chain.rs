//! `Chain`, the two-step workflow (`n -> n + 1 -> n + 2`) of the tests that need a real one
//! and no more.

use floxide::*;

node! {
    pub struct AddOne {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Chain { a: AddOne, b: AddOne }
    start = a;
    edges { a => [b]; b => []; }
}

/// A `Chain`.
pub fn chain() -> Chain {
    Chain {
        a: AddOne {},
        b: AddOne {},
    }
}
