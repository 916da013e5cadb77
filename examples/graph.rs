//! Graph export: print a workflow as Graphviz DOT and as a Mermaid flowchart.
//!
//! Run with `cargo run --example graph`, then render the DOT with
//! `cargo run --example graph | sed -n '/^digraph/,/^}/p' | dot -Tsvg > graph.svg`,
//! or paste the Mermaid text into any Mermaid renderer.

use floxide::*;
use serde::{Deserialize, Serialize};

/// A check's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Verdict {
    /// Passed, with a score.
    Pass(u32),
    /// Failed.
    Fail(String),
}

node! {
    pub struct Check {};
    input = u32;
    output = Verdict;
    |_ctx, n| {
        Ok(Transition::Next(if n > 0 { Verdict::Pass(n) } else { Verdict::Fail("zero".into()) }))
    }
}

node! {
    pub struct Score {};
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("score {n}"))) }
}

node! {
    pub struct Explain {};
    input = String;
    output = String;
    |_ctx, why| { Ok(Transition::Next(format!("failed: {why}"))) }
}

node! {
    pub struct Recover {};
    input = u32;
    output = String;
    |_ctx, _n| { Ok(Transition::Next("recovered".into())) }
}

workflow! {
    /// A small graph with every kind of edge.
    pub struct Review {
        #[retry = policy]
        check: Check,
        score: Score,
        explain: Explain,
        recover: Recover,
        policy: RetryPolicy,
    }
    start = check;
    edges {
        check => { Verdict::Pass(n) if n > 10 => [score]; Verdict::Pass(n) => [score]; Verdict::Fail(why) => [explain]; };
        check on_failure => [recover];
        score => [];
        explain => [];
        recover => [];
    }
}

fn workflow() -> Review {
    Review {
        check: Check {},
        score: Score {},
        explain: Explain {},
        recover: Recover {},
        policy: RetryPolicy::default(),
    }
}

fn main() {
    let wf = workflow();
    println!("{}", wf.to_dot());
    println!("{}", wf.to_mermaid());
}

#[cfg(test)]
mod tests {
    use floxide::Workflow;

    #[test]
    fn graphs_list_every_node_and_edge() {
        let wf = super::workflow();
        let dot = wf.to_dot();
        assert!(dot.starts_with("digraph Review {"));
        for edge in [
            "check -> score",
            "check -> explain",
            "check -> recover",
            "score -> __end",
        ] {
            assert!(dot.contains(edge), "missing {edge} in\n{dot}");
        }
        assert!(dot.contains("label=\"Verdict::Fail(why)\""), "{dot}");
        let mermaid = wf.to_mermaid();
        assert!(mermaid.starts_with("flowchart TD\n"));
        assert!(
            mermaid.contains("check -.->|\"on_failure\"| recover"),
            "{mermaid}"
        );
        // Deterministic: the same text every time.
        assert_eq!(dot, super::workflow().to_dot());
    }
}
