//! The registry of workflow graphs (what tools without a workflow's code draw its runs from).

use std::sync::Arc;
use std::time::Duration;

use super::{ctx, finish, orchestrator, pool, Chain, Gate};
use crate::distributed::*;
use crate::graph::VERSIONS_KEPT;
use crate::*;

/// The registered versions of workflow `name`, as the backend lists them.
async fn versions(backend: &Arc<dyn Backend>, name: &str) -> Vec<RegisteredGraph> {
    let graphs = backend.graphs().await.expect("list the graphs");
    graphs
        .into_iter()
        .filter(|g| g.graph.workflow == name)
        .collect()
}

/// G7: orchestrators and workers register their workflow's graph under its name and hash; the
/// same graph registered again is one version, seen again; a changed graph is a new version,
/// listed first; a workflow keeps its most recently registered versions only.
pub async fn g7_workflow_graphs_are_registered<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let wf = Chain::new(Gate::open());
    let expected = wf.graph();
    assert_eq!(expected.workflow, "Chain");
    assert!(
        !expected.edges.is_empty(),
        "the graph has its edges: {expected:?}"
    );
    let o = orchestrator(wf.clone(), &backend);
    let run = o.start_run(&ctx(), 1).await.unwrap();
    let first = versions(&backend, "Chain").await;
    assert_eq!(
        first.len(),
        1,
        "the orchestrator registered the graph: {first:?}"
    );
    assert_eq!(first[0].graph, expected);
    assert_eq!(first[0].hash, expected.hash());

    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut workers = pool(wf, &backend, 1);
    finish(&o, &run).await;
    workers.try_stop().await.unwrap();
    let again = versions(&backend, "Chain").await;
    assert_eq!(again.len(), 1, "the same graph is one version: {again:?}");
    assert_eq!(again[0].first_seen, first[0].first_seen);
    assert!(
        again[0].last_seen > first[0].last_seen,
        "the worker registered it again"
    );

    let changed = expected
        .clone()
        .with_edge("c", Some("a"), EdgeKind::OnFailure);
    assert_ne!(changed.hash(), expected.hash());
    tokio::time::sleep(Duration::from_millis(5)).await;
    backend.register_graph(&changed).await.unwrap();
    let both = versions(&backend, "Chain").await;
    assert_eq!(both.len(), 2, "a changed graph is a new version: {both:?}");
    assert_eq!(both[0].hash, changed.hash(), "the newest version first");
    assert_eq!(both[1].hash, expected.hash());

    // Versions beyond the kept count go, least recently registered first.
    let extra: Vec<WorkflowGraph> = (0..VERSIONS_KEPT + 2)
        .map(|i| {
            expected
                .clone()
                .with_node(format!("extra{i}"), "Extra", "u64", "u64", false)
        })
        .collect();
    for graph in &extra {
        tokio::time::sleep(Duration::from_millis(2)).await;
        backend.register_graph(graph).await.unwrap();
    }
    let kept: Vec<String> = versions(&backend, "Chain")
        .await
        .into_iter()
        .map(|g| g.hash)
        .collect();
    let newest: Vec<String> = extra
        .iter()
        .rev()
        .take(VERSIONS_KEPT)
        .map(WorkflowGraph::hash)
        .collect();
    assert_eq!(
        kept, newest,
        "the {VERSIONS_KEPT} most recent versions, newest first"
    );
}
