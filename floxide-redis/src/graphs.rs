//! The registry of workflow graphs: one hash for the deployment (`<prefix>graphs`), a field
//! per workflow and graph hash holding the [`RegisteredGraph`] as JSON. Written when a worker
//! or an orchestrator starts, read by tools; never part of a script.

use std::collections::BTreeMap;
use std::time::SystemTime;

use floxide_core::distributed::DistributedError;
use floxide_core::graph::versions_to_drop;
use floxide_core::{RegisteredGraph, WorkflowGraph};

use crate::RedisBackend;

impl RedisBackend {
    /// Every registered graph, by field.
    async fn registered(&self) -> Result<BTreeMap<String, RegisteredGraph>, DistributedError> {
        Ok(self
            .whole_hash(&self.keys().graphs())
            .await?
            .into_iter()
            .filter_map(|(field, json)| Some((field, serde_json::from_slice(&json).ok()?)))
            .collect())
    }

    pub(crate) async fn register_graph_here(
        &self,
        graph: &WorkflowGraph,
    ) -> Result<(), DistributedError> {
        let digest = graph.hash();
        let field = format!("{}\n{digest}", graph.workflow);
        let mut known = self.registered().await?;
        let now = SystemTime::now();
        let entry = match known.remove(&field) {
            Some(mut entry) => {
                entry.last_seen = now;
                entry
            }
            None => RegisteredGraph::new(graph.clone(), now, now),
        };
        let json =
            serde_json::to_string(&entry).map_err(|e| DistributedError::Codec(e.to_string()))?;
        // The workflow's versions beyond the most recently registered ones go.
        let stale: Vec<String> = versions_to_drop(
            known
                .iter()
                .filter(|(_, g)| g.graph.workflow == graph.workflow)
                .map(|(_, g)| (g.hash.as_str(), g.last_seen)),
            &digest,
        )
        .into_iter()
        .map(|hash| format!("{}\n{hash}", graph.workflow))
        .collect();
        let key = self.keys().graphs();
        let (key, field, json, stale) = (&key, &field, &json, &stale);
        self.client()
            .run(|mut conn| async move {
                let mut pipe = redis::pipe();
                pipe.hset(key, field, json).ignore();
                if !stale.is_empty() {
                    pipe.hdel(key, stale).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    pub(crate) async fn graphs_here(&self) -> Result<Vec<RegisteredGraph>, DistributedError> {
        let mut graphs: Vec<RegisteredGraph> = self.registered().await?.into_values().collect();
        graphs.sort_by_key(|g| std::cmp::Reverse(g.first_seen));
        Ok(graphs)
    }
}
