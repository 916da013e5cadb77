//! The whole `workflow!` grammar, run in-process.

use floxide::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    Left(u32),
    Right(u32),
    Pair(u32, String),
    #[default]
    Unit,
    Done(String),
    Other {
        code: u32,
    },
}

node! {
    pub struct Classify {};
    context = ();
    input = u32;
    output = Choice;
    |_ctx, n| {
        Ok(Transition::Next(match n {
            0 => Choice::Unit,
            1..=9 => Choice::Left(n),
            10..=19 => Choice::Right(n),
            20..=29 => Choice::Pair(n, "p".into()),
            30..=39 => Choice::Done(format!("done {n}")),
            _ => Choice::Other { code: n },
        }))
    }
}

node! {
    pub struct Show { tag: &'static str };
    input = u32;
    output = String;
    |_ctx, n| { Ok(Transition::Next(format!("{}:{n}", self.tag))) }
}

node! {
    pub struct ShowPair {};
    input = (u32, String);
    output = String;
    |_ctx, (n, s)| { Ok(Transition::Next(format!("pair:{n}{s}"))) }
}

node! {
    pub struct ShowChoice {};
    input = Choice;
    output = String;
    |_ctx, c| { Ok(Transition::Next(format!("rest:{c:?}"))) }
}

workflow! {
    pub struct Branchy {
        classify: Classify,
        left: Show,
        big: Show,
        right: Show,
        unit: Show,
        pair: ShowPair,
        rest: ShowChoice,
    }
    start = classify;
    edges {
        classify => {
            Choice::Left(x) => [left];
            Choice::Right(x) if x > 15 => [big];
            Choice::Right(x) => [right];
            Choice::Unit => [unit];
            Choice::Pair(a, b) => [pair];
            Choice::Done(s) => [];
            _ => [rest];
        };
        left => [];
        big => [];
        right => [];
        unit => [];
        pair => [];
        rest => [];
    }
}

fn branchy() -> Branchy {
    Branchy {
        classify: Classify {},
        left: Show { tag: "left" },
        big: Show { tag: "big" },
        right: Show { tag: "right" },
        unit: Show { tag: "unit" },
        pair: ShowPair {},
        rest: ShowChoice {},
    }
}

#[tokio::test]
async fn arms_route_by_variant_binding_guard_unit_terminal_and_wildcard() {
    let wf = branchy();
    let ctx = WorkflowCtx::new(());
    assert_eq!(wf.run(&ctx, 3).await.unwrap(), "left:3");
    assert_eq!(wf.run(&ctx, 12).await.unwrap(), "right:12");
    assert_eq!(wf.run(&ctx, 17).await.unwrap(), "big:17");
    assert_eq!(wf.run(&ctx, 0).await.unwrap(), "unit:0");
    assert_eq!(wf.run(&ctx, 21).await.unwrap(), "pair:21p");
    assert_eq!(wf.run(&ctx, 33).await.unwrap(), "done 33");
    assert_eq!(wf.run(&ctx, 50).await.unwrap(), "rest:Other { code: 50 }");
}

node! {
    pub struct Fail {};
    input = u32;
    output = u32;
    |_ctx, _n| { Err(FloxideError::Generic("boom".into())) }
}

node! {
    pub struct Recover {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1000)) }
}

workflow! {
    pub struct WithFallback {
        #[retry = policy]
        fail: Fail,
        recover: Recover,
        policy: RetryPolicy,
    }
    edges {
        fail on_failure => { [recover] };
        fail => [];
        recover => [];
    }
    start = fail;
}

#[tokio::test]
async fn on_failure_after_retries_gets_the_input() {
    let wf = WithFallback {
        fail: Fail {},
        recover: Recover {},
        policy: RetryPolicy::new(
            3,
            Duration::from_millis(1),
            Duration::from_millis(5),
            BackoffStrategy::Linear,
            RetryError::Generic,
        ),
    };
    assert_eq!(wf.run(&WorkflowCtx::new(()), 7).await.unwrap(), 1007);
    println!("{}", wf.to_dot());
    println!("{}", wf.to_mermaid());
}

/// `graph()` describes the workflow as written: nodes with their types, every arm with its
/// pattern and guard, terminal arms and edges, `on_failure` edges and `#[retry]` nodes.
#[test]
fn the_graph_lists_nodes_and_edges_with_their_kinds() {
    let graph = branchy().graph();
    assert_eq!(
        (graph.workflow.as_str(), graph.start.as_str()),
        ("Branchy", "classify")
    );
    let classify = &graph.nodes[0];
    assert_eq!(
        (classify.name.as_str(), classify.node_type.as_str()),
        ("classify", "Classify")
    );
    assert_eq!(classify.input, "u32");
    assert!(classify.output.ends_with("Choice"), "{}", classify.output);
    assert!(graph.nodes[5].input.contains("u32") && graph.nodes[5].input.contains("String"));
    let arm = |pattern: &str, to: Option<&str>| {
        let kind = match to {
            Some(_) => EdgeKind::Arm {
                pattern: pattern.to_owned(),
            },
            None => EdgeKind::Terminal {
                pattern: Some(pattern.to_owned()),
            },
        };
        ("classify".to_owned(), to.map(str::to_owned), kind)
    };
    let edges: Vec<(String, Option<String>, EdgeKind)> = graph
        .edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone(), e.kind.clone()))
        .collect();
    assert_eq!(
        edges[..7],
        [
            arm("Choice::Left(x)", Some("left")),
            arm("Choice::Right(x) if x > 15", Some("big")),
            arm("Choice::Right(x)", Some("right")),
            arm("Choice::Unit", Some("unit")),
            arm("Choice::Pair(a, b)", Some("pair")),
            arm("Choice::Done(s)", None),
            arm("_", Some("rest")),
        ]
    );
    assert_eq!(
        edges[7],
        (
            "left".to_owned(),
            None,
            EdgeKind::Terminal { pattern: None }
        )
    );

    let fallback = WithFallback {
        fail: Fail {},
        recover: Recover {},
        policy: RetryPolicy::default(),
    }
    .graph();
    assert!(fallback.nodes[0].retried && !fallback.nodes[1].retried);
    assert_eq!(fallback.nodes.len(), 2, "the policy field is not a node");
    assert_eq!(fallback.edges[0].kind, EdgeKind::OnFailure);
    assert_eq!(fallback.edges[0].to.as_deref(), Some("recover"));

    // The same source gives the same graph and hash; another graph another hash.
    assert_eq!(branchy().graph().hash(), graph.hash());
    assert_ne!(fallback.hash(), graph.hash());
}
