//! Split: one node's output split into many values, each processed by the next node.
//!
//! Run with `cargo run --example split`.

use floxide::*;
use serde::{Deserialize, Serialize};

/// The context: every processed word is recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    /// The processed words, upper-cased.
    pub words: EventLog<String>,
}

/// The splitter: a plain function, so the node's type can be named in the workflow.
fn words(sentence: String) -> Vec<String> {
    sentence.split_whitespace().map(str::to_owned).collect()
}

node! {
    /// Upper-cases one word and records it.
    pub struct Shout {};
    context = Seen;
    input = String;
    output = usize;
    |ctx, word| {
        ctx.words.append(word.to_uppercase());
        Ok(Transition::Next(word.len()))
    }
}

workflow! {
    /// Split a sentence into words, shout each one.
    pub struct ShoutWords { split: SplitNode<String, String>, shout: Shout }
    context = Seen;
    start = split;
    edges { split => [shout]; shout => []; }
}

async fn demo() -> Result<Vec<String>, FloxideError> {
    let wf = ShoutWords {
        split: SplitNode::new(words),
        shout: Shout {},
    };
    let ctx = WorkflowCtx::new(Seen::default());
    wf.run(&ctx, "floxide splits work into pieces".to_owned())
        .await?;
    let mut shouted: Vec<String> = ctx.store.words.events().collect();
    shouted.sort();
    println!("every word was processed: {shouted:?}");
    Ok(shouted)
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_word_is_processed() {
        let shouted = super::demo().await.unwrap();
        assert_eq!(shouted, ["FLOXIDE", "INTO", "PIECES", "SPLITS", "WORK"]);
    }
}
