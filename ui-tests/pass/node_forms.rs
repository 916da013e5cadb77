//! `node!` with fields, without fields, with doc comments and attributes on the struct,
//! `_` closure parameters and a custom context.

use floxide::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub factor: u32,
}

node! {
    /// Multiplies its input by the context's factor, then adds `offset`.
    #[allow(dead_code)]
    #[derive(PartialEq)]
    pub struct Scale { offset: u32, label: String };
    context = Settings;
    input = u32;
    output = u32;
    |ctx, n| {
        assert!(!self.label.is_empty());
        Ok(Transition::Next(n * ctx.factor + self.offset))
    }
}

node! {
    /// Ignores both its context and its input.
    pub struct Constant {};
    context = Settings;
    input = u32;
    output = String;
    |_, _| { Ok(Transition::Next("constant".to_owned())) }
}

node! {
    pub struct Typed {};
    input = u32;
    output = u32;
    |_ctx: &(), n: u32| { Ok(Transition::Next(n + 1)) }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let settings = Settings { factor: 3 };
    let scale = Scale {
        offset: 1,
        label: "scale".to_owned(),
    };
    // Fields are public, and the struct derives `Clone` and `Debug` next to the user's derives.
    assert_eq!(scale.clone(), scale);
    assert_eq!(scale.offset, 1);
    let _ = format!("{scale:?}");

    match scale.process(&settings, 4).await {
        Ok(Transition::Next(n)) => assert_eq!(n, 13),
        other => panic!("unexpected {other:?}"),
    }
    match (Constant {}).process(&settings, 4).await {
        Ok(Transition::Next(s)) => assert_eq!(s, "constant"),
        other => panic!("unexpected {other:?}"),
    }
    match (Typed {}).process(&(), 4).await {
        Ok(Transition::Next(n)) => assert_eq!(n, 5),
        other => panic!("unexpected {other:?}"),
    }
}
