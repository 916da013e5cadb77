//! A run's step history: what happened to each lease (taken, renewed, committed, fenced out,
//! failed, released, expired), so that "why did this step run twice?" has an answer.
//!
//! Backends that keep it record one [`StepEvent`] per transition, in the same atomic operation
//! as the transition, return at most [`HISTORY_KEPT`] events per run (the latest), and let
//! them expire with the run.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::distributed::WorkerId;
use crate::ItemId;

/// The most events of a run's history a backend returns (the latest ones).
pub const HISTORY_KEPT: usize = 1_000;

/// One transition of a step's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepEvent {
    /// When it happened (the backend's clock).
    pub at: SystemTime,
    /// The work item.
    pub item_id: ItemId,
    /// Its node.
    pub node: String,
    /// What happened.
    pub kind: StepEventKind,
    /// The worker concerned (the holder of the lease), when one is.
    pub worker: Option<WorkerId>,
    /// The lease's fencing token.
    pub token: u64,
    /// The item's attempt (1 for the first; retries count up).
    pub attempt: u32,
}

impl StepEvent {
    /// An event of `kind` for item `item_id` at `node`, at `at`.
    pub fn new(
        at: SystemTime,
        item_id: ItemId,
        node: impl Into<String>,
        kind: StepEventKind,
        worker: Option<WorkerId>,
        token: u64,
        attempt: u32,
    ) -> Self {
        StepEvent {
            at,
            item_id,
            node: node.into(),
            kind,
            worker,
            token,
            attempt,
        }
    }
}

/// What happened to a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StepEventKind {
    /// A worker took the item, leased until `until`; `delivery` counts the deliveries of this
    /// attempt (more than 1: an earlier lease was lost).
    Leased {
        /// When the lease expires unless renewed.
        until: SystemTime,
        /// The delivery of this attempt (1 for the first).
        delivery: u32,
    },
    /// The holder renewed its lease (a heartbeat).
    Renewed {
        /// The new expiry.
        until: SystemTime,
    },
    /// The step's effects were committed.
    Committed,
    /// The holder's commit (or failure report) was refused: its lease had been taken over or
    /// its item was gone. Its effects were not applied.
    Fenced,
    /// The node failed: retried at `retry_at`, or dead-lettered (`None`).
    Failed {
        /// When the retry falls due.
        retry_at: Option<SystemTime>,
    },
    /// The holder gave the item back unexecuted (graceful shutdown).
    Released,
    /// The lease expired without a commit (the holder died or stalled): the item was handed
    /// back to the queue, to be taken again.
    Expired,
}

impl StepEventKind {
    /// A short name: `leased`, `renewed`, `committed`, `fenced`, `failed`, `released`,
    /// `expired`.
    pub fn name(&self) -> &'static str {
        match self {
            StepEventKind::Leased { .. } => "leased",
            StepEventKind::Renewed { .. } => "renewed",
            StepEventKind::Committed => "committed",
            StepEventKind::Fenced => "fenced",
            StepEventKind::Failed { .. } => "failed",
            StepEventKind::Released => "released",
            StepEventKind::Expired => "expired",
        }
    }
}
