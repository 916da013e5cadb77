//! Quickstart: a three-node linear workflow run in-process.
//!
//! Run with `cargo run --example quickstart`.

use floxide::*;

node! {
    /// Splits a sentence into words.
    pub struct Tokenize {};
    context = ();
    input = String;
    output = Vec<String>;
    |_ctx, text| {
        let words = text.split_whitespace().map(str::to_owned).collect();
        Ok(Transition::Next(words))
    }
}

node! {
    /// Counts the words longer than `min_len`.
    pub struct CountLong { min_len: usize };
    context = ();
    input = Vec<String>;
    output = usize;
    |_ctx, words| {
        Ok(Transition::Next(words.iter().filter(|w| w.len() > self.min_len).count()))
    }
}

node! {
    /// Formats the count as a report line.
    pub struct Report {};
    context = ();
    input = usize;
    output = String;
    |_ctx, count| {
        Ok(Transition::Next(format!("{count} long words")))
    }
}

workflow! {
    /// Tokenize → count → report.
    pub struct WordStats {
        tokenize: Tokenize,
        count: CountLong,
        report: Report,
    }
    start = tokenize;
    edges {
        tokenize => [count];
        count => [report];
        report => [];
    }
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    let wf = WordStats {
        tokenize: Tokenize {},
        count: CountLong { min_len: 4 },
        report: Report {},
    };
    let ctx = WorkflowCtx::new(());
    let out = wf
        .run(
            &ctx,
            "the quick brown fox jumps over the lazy dog".to_owned(),
        )
        .await?;
    println!("{out}");
    assert_eq!(out, "3 long words");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quickstart_runs() {
        super::main().unwrap();
    }
}
