//! Error fallback: when a node fails, `on_failure` routes its input to a fallback node.
//!
//! Run with `cargo run --example error_fallback`.

use floxide::*;

node! {
    /// Parses a number; fails on anything else.
    pub struct Parse {};
    input = String;
    output = i64;
    |_ctx, text| {
        match text.trim().parse::<i64>() {
            Ok(n) => Ok(Transition::Next(n)),
            Err(e) => Err(FloxideError::Generic(format!("`{text}` is not a number: {e}"))),
        }
    }
}

node! {
    /// Squares the number.
    pub struct Square {};
    input = i64;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("{n}² = {}", n * n))) }
}

node! {
    /// Receives the failed node's input and explains.
    pub struct Explain {};
    input = String;
    output = String;
    |_ctx, text| { Ok(Transition::Next(format!("could not square {text:?}"))) }
}

workflow! {
    /// Parse → square, or explain when parsing fails.
    pub struct SquareIt { parse: Parse, square: Square, explain: Explain }
    start = parse;
    edges {
        parse => [square];
        parse on_failure => [explain];
        square => [];
        explain => [];
    }
}

async fn demo() -> Result<Vec<String>, FloxideError> {
    let wf = SquareIt {
        parse: Parse {},
        square: Square {},
        explain: Explain {},
    };
    let ctx = WorkflowCtx::new(());
    let mut out = Vec::new();
    for input in ["12", "twelve"] {
        let result = wf.run(&ctx, input.to_owned()).await?;
        println!("{input}: {result}");
        out.push(result);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn failures_go_to_the_fallback() {
        let out = super::demo().await.unwrap();
        assert_eq!(out, ["12² = 144", "could not square \"twelve\""]);
    }
}
