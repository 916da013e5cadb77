//! How the in-memory backend ends runs and dead letters: a finished run is remembered for its
//! retention and then removed, a slice at a time (G9); dead letters are added, revived and
//! dropped past their own retention.

use std::time::Duration;

use tokio::time::Instant;

use super::parts::{self, ItemsState, QueueState, RunItems, RunsState};
use super::PRUNE_SLICE;
use crate::distributed::{DeadLetter, RunStatus, WorkItemStatus};
use crate::ItemId;

/// Removes the runs past their `retention`, a slice at a time (each start prunes one): no
/// operation does work proportional to the history (G9). Returns what they held, to be
/// dropped once the locks are released.
pub(super) fn prune_finished(
    runs: &mut RunsState,
    (items, contexts, metrics, errors): (
        &mut ItemsState,
        &mut parts::ContextsState,
        &mut parts::MetricsState,
        &mut parts::ErrorsState,
    ),
    retention: Duration,
) -> Vec<impl Sized> {
    let mut gone = Vec::new();
    let now = Instant::now();
    for _ in 0..PRUNE_SLICE {
        let Some((at, run)) = runs.finished.front().cloned() else {
            break;
        };
        if at + retention > now {
            break;
        }
        runs.finished.pop_front();
        // A run resumed since (or finished again later) is not this entry's to remove.
        if runs.finished_at.get(&run) != Some(&at) {
            continue;
        }
        runs.finished_at.remove(&run);
        runs.inputs.remove(&run);
        if let Some(info) = runs.runs.remove(&run) {
            if let Some(key) = &info.idempotency_key {
                runs.keys.remove(key);
            }
        }
        if let Some(seq) = runs.seq_of.remove(&run) {
            runs.order.remove(&seq);
        }
        gone.push((
            items.runs.remove(&run),
            contexts.contexts.remove(&run),
            metrics.runs.remove(&run),
            errors.runs.remove(&run),
            errors.history.remove(&run),
        ));
    }
    gone
}

/// A run reached a final status: remembered for its retention, and the items of a completed
/// or cancelled run go (returned, to be dropped once the locks are released: no lock is held
/// while a large run's items are freed). A failed run keeps its items, which a resume needs.
pub(super) fn finished(
    runs: &mut RunsState,
    items: &mut ItemsState,
    run_id: &str,
    status: RunStatus,
) -> Option<RunItems> {
    let now = Instant::now();
    runs.finished.push_back((now, run_id.to_owned()));
    runs.finished_at.insert(run_id.to_owned(), now);
    if status == RunStatus::Failed {
        None
    } else {
        items.runs.remove(run_id)
    }
}

/// The first `most` items of run `run_id` in the dead letters.
pub(super) fn dead_of(queue: &QueueState, run_id: &str, most: usize) -> Vec<ItemId> {
    queue
        .dead
        .range(
            (run_id.to_owned(), ItemId::from_u128(0))
                ..=(run_id.to_owned(), ItemId::from_u128(u128::MAX)),
        )
        .map(|(key, _)| key.1)
        .take(most)
        .collect()
}

/// Takes items `ids` of run `run_id` out of the dead letters: each one that failed for good
/// is outstanding again, parked (with its deliveries counted anew) until the run's resume
/// queues it.
pub(super) fn revive(
    queue: &mut QueueState,
    run_id: &str,
    run_items: &mut RunItems,
    ids: &[ItemId],
) {
    for id in ids {
        queue.dead.remove(&(run_id.to_owned(), *id));
        if let Some(r) = run_items.items.get_mut(id) {
            if r.status == WorkItemStatus::PermanentlyFailed {
                r.status = WorkItemStatus::Held;
                r.deliveries = 0;
                run_items.outstanding += 1;
                run_items.parked.push_back(*id);
            }
        }
    }
}

/// Adds a dead letter (and drops those past their retention, a slice at a time).
pub(super) fn add_letter(queue: &mut QueueState, letter: DeadLetter, retention: Duration) {
    let now = Instant::now();
    queue
        .dead_order
        .push_back((now, letter.run_id.clone(), letter.item_id));
    queue
        .dead
        .insert((letter.run_id.clone(), letter.item_id), letter);
    prune_letters(queue, retention, PRUNE_SLICE, now);
}

/// Drops up to `most` dead letters past their `retention` at `now`, oldest first.
pub(super) fn prune_letters(
    queue: &mut QueueState,
    retention: Duration,
    most: usize,
    now: Instant,
) {
    for _ in 0..most {
        match queue.dead_order.front() {
            Some((at, _, _)) if *at + retention <= now => {
                if let Some((_, run, item)) = queue.dead_order.pop_front() {
                    queue.dead.remove(&(run, item));
                }
            }
            _ => break,
        }
    }
}
