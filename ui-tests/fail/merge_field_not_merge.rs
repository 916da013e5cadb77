use std::collections::BTreeSet;

use floxide::*;

#[derive(Default, Merge)]
pub struct Ctx {
    pub seen: BTreeSet<u32>,
    pub count: u32,
}

fn main() {
    let _ = Ctx::default();
}
