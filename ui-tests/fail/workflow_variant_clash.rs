use floxide::*;

node! {
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    #[allow(non_snake_case)]
    pub struct Flow { load_data: Inc, loadData: Inc }
    start = load_data;
    edges {
        load_data => [loadData];
        loadData => [];
    }
}

fn main() {}
