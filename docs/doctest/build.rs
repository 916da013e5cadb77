//! Copies the guide's chapters into OUT_DIR for `src/lib.rs` to include as doc-tests.
//!
//! Blocks marked ```` ```rust,ignore ```` in the guide are fragments (an API listing, a piece of
//! a larger program): they become ```` ```text ```` here, so that only complete programs are
//! doc-tests and nothing shows up as an ignored test.

use std::path::Path;

fn main() {
    let guide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("guide");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/guide");
    println!("cargo:rerun-if-changed={}", guide.display());
    let entries = std::fs::read_dir(&guide).expect("read docs/src");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("read a chapter");
        let text = text.replace("```rust,ignore", "```text");
        let name = path.file_name().expect("a file name");
        std::fs::write(out.join(name), text).expect("write a chapter");
    }
}
