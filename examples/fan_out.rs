//! Fan-out: one node's output goes to several branches that run concurrently.
//!
//! Run with `cargo run --example fan_out`.

use std::time::{Duration, Instant};

use floxide::*;
use serde::{Deserialize, Serialize};

/// The context: every branch appends what it did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// One line per finished branch.
    pub lines: EventLog<String>,
}

node! {
    /// Fetches a page (simulated).
    pub struct Fetch {};
    context = Report;
    input = String;
    output = String;
    |_ctx, url| { Ok(Transition::Next(format!("<html>{url}</html>"))) }
}

node! {
    /// Analyses the page for `label`, taking `ms` milliseconds.
    pub struct Analyse { label: &'static str, ms: u64 };
    context = Report;
    input = String;
    output = String;
    |ctx, page| {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        ctx.lines.append(format!("{}: {} bytes", self.label, page.len()));
        Ok(Transition::Next(self.label.to_owned()))
    }
}

workflow! {
    /// Fetch once, analyse three ways at the same time.
    pub struct Crawl { fetch: Fetch, links: Analyse, words: Analyse, images: Analyse }
    context = Report;
    start = fetch;
    edges {
        fetch => [links, words, images];
        links => [];
        words => [];
        images => [];
    }
}

async fn demo() -> Result<(Vec<String>, Duration), FloxideError> {
    let wf = Crawl {
        fetch: Fetch {},
        links: Analyse {
            label: "links",
            ms: 100,
        },
        words: Analyse {
            label: "words",
            ms: 100,
        },
        images: Analyse {
            label: "images",
            ms: 100,
        },
    };
    let ctx = WorkflowCtx::new(Report::default());
    let started = Instant::now();
    let first = wf.run(&ctx, "https://example.org".to_owned()).await?;
    let took = started.elapsed();
    println!("first branch done: {first}; all three took {took:?} (each 100 ms)");
    let mut lines: Vec<String> = ctx.store.lines.events().collect();
    lines.sort();
    for line in &lines {
        println!("  {line}");
    }
    Ok((lines, took))
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn all_branches_run() {
        let (lines, _) = super::demo().await.unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("images"));
        assert!(lines[1].starts_with("links"));
        assert!(lines[2].starts_with("words"));
    }
}
