//! The user guide's code blocks, compiled and run as doc-tests by `cargo test`.
//!
//! Each chapter of `docs/src` is included below; `cargo test -p floxide-guide-tests` builds and
//! runs every complete program in it, so the guide cannot drift from the API.

macro_rules! chapters {
    ($($module:ident => $file:literal),* $(,)?) => {
        $(
            #[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/", $file))]
            pub mod $module {}
        )*
    };
}

chapters! {
    getting_started => "getting-started.md",
    nodes => "nodes.md",
    workflows => "workflows.md",
    running => "running.md",
    context => "context.md",
    retries => "retries.md",
    checkpoints => "checkpoints.md",
    building_blocks => "building-blocks.md",
    distributed => "distributed.md",
    graphs => "graphs.md",
    redis => "redis.md",
    postgres => "postgres.md",
    migration => "migration.md",
}
