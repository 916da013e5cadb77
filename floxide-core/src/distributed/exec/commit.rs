//! Step part 4: build a step's commit, and settle the backend's answer to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::chain::{Gate, GateKeeper};
use super::lease::Finished;
use super::{renew, ExecConfig, Executed, StepEnd};
use crate::distributed::backend::{Backend, CommitItem, CommitOutcome, NewItem, StepCommit, Taken};
use crate::distributed::codec::{codec_error, decode, encode};
use crate::distributed::{metrics, WorkflowError};
use crate::{Context, FloxideError, Merge, WorkItem};

/// A step whose effects wait to be committed.
#[derive(Debug)]
pub(crate) struct Pending<O> {
    /// The item (its lease fences the commit; a held step runs again from it).
    pub(crate) taken: Taken,
    /// The effects.
    pub(crate) commit: StepCommit,
    /// Whether the node returned `Hold` (then a changed context means running it again).
    held: bool,
    /// The context the step left, to join into a newer one after a conflict.
    after: Vec<u8>,
    /// The context the worker holds once the step is applied: `after`, or after a conflict
    /// the join of `after` into the latest context.
    merged: Option<Vec<u8>>,
    /// Its version.
    after_version: u64,
    outputs: Vec<O>,
    ran: Duration,
    /// How many times the node waited.
    waits: u32,
    /// When the lease was last granted or renewed (a step waiting long for its commit renews
    /// it before trying again).
    renewed: Instant,
    /// The step's first successors run already (a chain): the commit leases that many to
    /// this worker for that long, and the keeper tells them how the commit was settled.
    keep: Option<(Duration, usize, GateKeeper)>,
    /// For a chained step, its parent's gate: its item is kept for this worker by the
    /// parent's commit, so its own commit goes only behind that one (see
    /// [`Pending::waits_for_parent`]).
    parent: Option<Gate>,
    /// When the step finished, in the worker's order of finished steps: a parent finishes
    /// before the steps chained to it, so commits ordered by it carry a parent first.
    born: u64,
    /// Whether the step holds one of the worker's slots while it waits for its commit: not
    /// when a step of its chain holds it (a chained step, or one whose chain goes on).
    holds_slot: bool,
}

/// The order of finished steps (see `Pending::born`).
static BORN: AtomicU64 = AtomicU64::new(0);

/// The commit of a node that ran to its end; `Err` (with the item back) when its results
/// cannot be serialized, a reason to dead-letter it.
pub(super) fn build<C, WI, O>(
    taken: Taken,
    finished: Finished<C, WI, O>,
) -> Result<Pending<O>, Box<(Taken, String)>>
where
    C: Context,
    WI: WorkItem,
    O: serde::Serialize,
{
    let Finished {
        mut sink,
        ctx,
        loaded,
        ran,
        waits,
        elapsed,
        renewed,
        ..
    } = finished;
    let after = match encode(&ctx) {
        Ok(bytes) => bytes,
        Err(e) => {
            let reason = format!("the context could not be serialized after the step: {e}");
            return Err(Box::new((taken, reason)));
        }
    };
    drop(ctx);
    let held = sink.held();
    let mut commit = StepCommit::new(taken.node.clone());
    commit.duration = elapsed;
    commit.require_version = held.then_some(loaded.version);
    commit.handled_failures = sink
        .handled_failures()
        .iter()
        .map(|(node, error)| WorkflowError {
            work_item: taken.lease.item_id,
            node: (*node).to_owned(),
            error: error.to_string(),
            attempt: taken.attempt,
            handled: true,
            timestamp: SystemTime::now(),
        })
        .collect();
    let (items, outputs, _) = sink.take();
    let encoded = encode_effects(&items, &outputs);
    let (successors, json) = match encoded {
        Ok(effects) => effects,
        Err(reason) => return Err(Box::new((taken, reason))),
    };
    commit.successors = successors;
    commit.outputs = json;
    let mut after_version = loaded.version;
    if after != loaded.bytes {
        commit.context = Some((loaded.version, after.clone()));
        after_version += 1;
    }
    Ok(Pending {
        taken,
        commit,
        held,
        after,
        merged: None,
        after_version,
        outputs,
        ran,
        waits,
        renewed,
        keep: None,
        parent: None,
        born: BORN.fetch_add(1, Ordering::Relaxed),
        holds_slot: true,
    })
}

/// The successors and outputs as the backend stores them.
fn encode_effects<WI: WorkItem, O: serde::Serialize>(
    items: &[WI],
    outputs: &[O],
) -> Result<(Vec<NewItem>, Vec<serde_json::Value>), String> {
    let mut successors = Vec::with_capacity(items.len());
    for item in items {
        let bytes =
            encode(item).map_err(|e| format!("a successor could not be serialized: {e}"))?;
        successors.push(NewItem::new(item.instance_id(), item.node_name(), bytes));
    }
    let mut json = Vec::with_capacity(outputs.len());
    for output in outputs {
        json.push(
            serde_json::to_value(output)
                .map_err(|e| format!("the output could not be serialized: {e}"))?,
        );
    }
    Ok((successors, json))
}

impl<O> Pending<O> {
    /// When the step's lease is next due for renewal while it waits for its commit.
    pub(crate) fn renewal_due(&self, config: &ExecConfig) -> Instant {
        self.renewed + config.heartbeat_interval
    }

    /// Renews the step's lease while it waits for its commit: the step again, or how it
    /// ends when the lease is gone (not for a chained step, see below) or the run no longer
    /// takes results.
    ///
    /// # Errors
    /// A backend error.
    pub(crate) async fn keep(
        mut self: Box<Self>,
        backend: &dyn Backend,
        config: &ExecConfig,
    ) -> Result<Executed<O>, FloxideError> {
        let now = Instant::now();
        match renew(backend, config, &self.taken).await? {
            // A chained step's kept lease is made by its parent's commit, which may not have
            // been applied yet (it waits too, or is on its way): the step waits on. Its own
            // commit is fenced all the same.
            Some(StepEnd::Abandoned { lease_lost: true }) if self.parent.is_some() => {}
            Some(end) => {
                return Ok(Executed::Ended {
                    node: self.taken.node,
                    end,
                })
            }
            None => {}
        }
        self.renewed = now;
        Ok(Executed::Ready(self))
    }

    /// The step as a batch commit carries it.
    pub(crate) fn item(&self) -> CommitItem<'_> {
        let (version, bytes) = self.held_context();
        let item =
            CommitItem::new(&self.taken.lease, &self.commit).with_held_context(version, bytes);
        match &self.keep {
            Some((timeout, count, _)) => item.with_successors_kept(*timeout, *count),
            None => item,
        }
    }

    /// How many times the step's node waited while it ran.
    pub(crate) fn waits(&self) -> u32 {
        self.waits
    }

    /// The context the worker holds once the step is applied, and its version.
    pub(crate) fn held_context(&self) -> (u64, &[u8]) {
        (
            self.after_version,
            self.merged.as_deref().unwrap_or(&self.after),
        )
    }

    /// Makes the commit lease the step's first `count` successors to this worker for
    /// `timeout` (they run already); `keeper` tells them how the commit is settled.
    pub(crate) fn keep_successors(&mut self, timeout: Duration, count: usize, keeper: GateKeeper) {
        self.keep = Some((timeout, count, keeper));
    }

    /// Marks the chained step as holding no slot: its chain's first step holds it.
    pub(crate) fn chained(mut self: Box<Self>) -> Box<Self> {
        self.holds_slot = false;
        self
    }

    /// Marks the step's item as kept for this worker by the commit behind `parent` (a
    /// chained step; one that went on alone keeps its slot).
    pub(crate) fn tied(mut self: Box<Self>, parent: Gate) -> Box<Self> {
        self.parent = Some(parent);
        self
    }

    /// The step's place in the worker's order of finished steps (see `born`).
    pub(crate) fn born(&self) -> u64 {
        self.born
    }

    /// Whether a chained step must wait for a later commit: its parent's commit is not
    /// settled and the parent is not among `earlier`, the steps going before it in this one.
    /// (Committed ahead of its parent, it would be refused, its item not created yet.) The
    /// parent is looked for from the end: it mostly goes just before.
    pub(crate) fn waits_for_parent(&self, earlier: &[Pending<O>]) -> bool {
        self.parent.as_ref().is_some_and(|gate| {
            !gate.is_settled() && !earlier.iter().rev().any(|p| gate.is_parent(&p.taken.lease))
        })
    }

    /// Leaves the step's slot to its chain's step that goes on running.
    pub(crate) fn leave_slot(&mut self) {
        self.holds_slot = false;
    }

    /// Whether the step holds one of the worker's slots (see `holds_slot`).
    pub(crate) fn holds_slot(&self) -> bool {
        self.holds_slot
    }
}

/// What to do after the backend answered a step's commit.
#[derive(Debug)]
pub(crate) enum Settled<O> {
    /// The step is over.
    Done {
        /// Its node.
        node: String,
        /// How it ended.
        end: StepEnd<O>,
    },
    /// A held step saw a newer context: run it again (on the latest context).
    Rerun(Taken),
    /// Another step of the run committed first: join into the latest context and commit again.
    Remerge(Box<Pending<O>>),
}

/// Settles `pending` after the backend answered `outcome` to its commit.
pub(crate) fn settle<O>(
    workflow: &'static str,
    mut pending: Pending<O>,
    outcome: CommitOutcome,
) -> Settled<O> {
    // A successor running already (a chain) learns whether its item was created; a step
    // committed again after a conflict no longer keeps it (it is queued as usual).
    if let Some((_, _, keeper)) = pending.keep.take() {
        keeper.settle(matches!(outcome, CommitOutcome::Committed { .. }));
    }
    let end = match outcome {
        CommitOutcome::Committed { .. } => StepEnd::Committed {
            outputs: pending.outputs,
            ran: pending.ran,
        },
        CommitOutcome::LeaseLost if pending.parent.is_some() => {
            tracing::debug!(run_id = %pending.taken.lease.run_id, node = %pending.taken.node, "a chained step's parent was not committed; its effects are discarded");
            StepEnd::Abandoned { lease_lost: true }
        }
        CommitOutcome::LeaseLost => {
            tracing::warn!(run_id = %pending.taken.lease.run_id, node = %pending.taken.node, "lease lost before the commit; the step's effects are discarded");
            StepEnd::Abandoned { lease_lost: true }
        }
        CommitOutcome::RunInactive(status) => {
            tracing::info!(run_id = %pending.taken.lease.run_id, %status, "run no longer active; the step's effects are discarded");
            StepEnd::Abandoned { lease_lost: false }
        }
        CommitOutcome::ContextConflict { .. } => {
            metrics::commit_conflict(workflow);
            if pending.held {
                tracing::debug!(run_id = %pending.taken.lease.run_id, "a held step saw a newer context; executing it again");
                let mut taken = pending.taken;
                taken.context = None;
                return Settled::Rerun(taken);
            }
            return Settled::Remerge(Box::new(pending));
        }
    };
    Settled::Done {
        node: pending.taken.node,
        end,
    }
}

/// Joins the context `pending` left into the run's latest one (with [`Merge`]), for a new
/// commit against that version. The node does not run again. The lease is renewed first when a
/// heartbeat is due (conflicts can keep a step from committing for a while); the step ends
/// when the lease is gone or the run no longer takes results.
///
/// # Errors
/// A backend error loading the context or renewing the lease, or a codec error.
pub(crate) async fn remerge<C, O>(
    backend: &dyn Backend,
    config: &ExecConfig,
    mut pending: Box<Pending<O>>,
) -> Result<Executed<O>, FloxideError>
where
    C: Context + Merge,
{
    if pending.renewal_due(config) <= Instant::now() {
        pending = match pending.keep(backend, config).await? {
            Executed::Ready(kept) => kept,
            ended => return Ok(ended),
        };
    }
    let latest = backend.load_context(&pending.taken.lease.run_id).await?;
    let merged = join::<C>(&latest.bytes, &pending.after).map_err(codec_error)?;
    // (A step that is not held requires a version only when `chain` pinned it to an earlier
    // step's context; the latest one is stored.)
    pending.commit.require_version = None;
    pending.rebase(latest.version, &latest.bytes, merged);
    Ok(Executed::Ready(pending))
}

/// `ours` joined into `base` (both encoded contexts), encoded.
fn join<C: Context + Merge>(base: &[u8], ours: &[u8]) -> Result<Vec<u8>, String> {
    let mut merged: C = decode(base)?;
    merged.merge(decode::<C>(ours)?);
    encode(&merged)
}

impl<O> Pending<O> {
    /// Makes the step commit `merged` against the context `base` at `version`.
    fn rebase(&mut self, version: u64, base: &[u8], merged: Vec<u8>) {
        let changed = merged != base;
        self.after_version = version + u64::from(changed);
        self.commit.context = changed.then(|| (version, merged.clone()));
        self.merged = Some(merged);
    }

    /// The context the run has once this step is committed, and its version (`None` when
    /// the step leaves the context as it found it).
    fn context_after(&self) -> Option<(u64, &[u8])> {
        self.commit.context.as_ref()?;
        Some((
            self.after_version,
            self.merged.as_deref().unwrap_or(&self.after),
        ))
    }
}

/// Chains the context changes of steps of one run within a batch: each later step is joined
/// (with [`Merge`]) into what the earlier one leaves, as a conflict would make it do after
/// a round trip, so that they all commit in one call instead of all but one being refused.
/// A held step is left as it is (a newer context means running it again), and so is a step
/// that already saw a newer context than the earlier one. A step whose changes the earlier
/// step's context holds already (its own chained successor's, when a lease renewal put that
/// one first) then changes nothing, and requires the earlier step's version: refused with it.
pub(crate) fn chain<C: Context + Merge, O>(batch: &mut [Pending<O>]) {
    for i in 1..batch.len() {
        let (before, rest) = batch.split_at_mut(i);
        let this = &mut rest[0];
        let Some((base_version, _)) = this.commit.context else {
            continue;
        };
        if this.held {
            continue;
        }
        let run = &this.taken.lease.run_id;
        let Some(prev) = before
            .iter()
            .rev()
            .filter(|p| &p.taken.lease.run_id == run)
            .find_map(Pending::context_after)
        else {
            continue;
        };
        let (version, base) = prev;
        if base_version >= version {
            continue;
        }
        // A context that does not decode is left to the regular path (and its error).
        if let Ok(merged) = join::<C>(base, &this.after) {
            this.rebase(version, base, merged);
            // Its changes are in the earlier step's context already: it changes nothing
            // now, but holds only if that step is applied (else its changes would be lost),
            // so it requires that step's version.
            if this.commit.context.is_none() {
                this.commit.require_version = Some(version);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::distributed::backend::{Lease, VersionedContext};
    use crate::distributed::WorkerId;
    use crate::ItemId;

    /// A context of tags.
    type Tags = BTreeSet<String>;

    fn tags(list: &[&str]) -> Vec<u8> {
        let set: Tags = list.iter().map(|t| (*t).to_owned()).collect();
        encode(&set).unwrap()
    }

    /// A finished step of item `item` of run `r` that ran on the context `before` at
    /// `version` and left `after`.
    pub(crate) fn step(item: u128, version: u64, before: &[&str], after: &[&str]) -> Pending<()> {
        let lease = Lease::new("r", ItemId::from_u128(item), 1, WorkerId::from("w"));
        let mut taken = Taken::new(lease, "n", Vec::new());
        taken.context = Some(VersionedContext::new(tags(before), version));
        let (before, after) = (tags(before), tags(after));
        let mut commit = StepCommit::new("n");
        let changed = before != after;
        if changed {
            commit.context = Some((version, after.clone()));
        }
        Pending {
            taken,
            commit,
            held: false,
            after,
            merged: None,
            after_version: version + u64::from(changed),
            outputs: Vec::new(),
            ran: Duration::ZERO,
            waits: 0,
            renewed: Instant::now(),
            keep: None,
            parent: None,
            born: BORN.fetch_add(1, Ordering::Relaxed),
            holds_slot: true,
        }
    }

    #[test]
    fn a_later_step_of_the_run_is_joined_into_the_earlier_ones_context() {
        let mut batch = [
            step(1, 4, &["x"], &["x", "a"]),
            step(2, 4, &["x"], &["x", "b"]),
        ];
        chain::<Tags, _>(&mut batch);
        let (base, bytes) = batch[1].commit.context.clone().unwrap();
        assert_eq!(base, 5, "the second step commits on top of the first");
        assert_eq!(bytes, tags(&["a", "b", "x"]));
        assert_eq!(batch[1].commit.require_version, None);
        assert_eq!(batch[1].held_context().0, 6);
    }

    #[test]
    fn a_step_whose_changes_an_earlier_one_holds_requires_that_ones_version() {
        // A parent (version 4 to 5) and its chained child (5 to 6), the child first: the
        // parent joined into the child's context changes nothing, yet holds only with it.
        let mut batch = [
            step(2, 5, &["x", "a"], &["x", "a", "b"]),
            step(1, 4, &["x"], &["x", "a"]),
        ];
        chain::<Tags, _>(&mut batch);
        assert_eq!(batch[1].commit.context, None);
        assert_eq!(
            batch[1].commit.require_version,
            Some(6),
            "refused with the step it was joined into, not committed as a no-op"
        );
    }
}
