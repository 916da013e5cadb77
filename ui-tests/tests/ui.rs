//! Compile-pass and compile-fail tests of `node!`, `workflow!` and `#[derive(Merge)]`.
//!
//! Regenerate the expected compiler output with
//! `TRYBUILD=overwrite cargo test -p floxide-ui-tests`, then read every `.stderr`: the caret
//! must sit on the offending token and the message must say how to fix it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("pass/*.rs");
    t.compile_fail("fail/*.rs");
}
