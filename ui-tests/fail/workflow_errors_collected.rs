use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Flow { first: Inc, second: Inc, third: Inc }
    start = frist;
    edges {
        first => [second];
        second => [third, third];
        third => [];
    }
}

fn main() {
    // The struct and its work-item enum are still generated: no secondary errors here.
    let _ = Flow {
        first: Inc {},
        second: Inc {},
        third: Inc {},
    };
    let _: Option<FlowWorkItem> = None;
}
