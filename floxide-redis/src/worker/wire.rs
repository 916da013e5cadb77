//! The worker path's messages: the arguments of take and commit calls, and their replies
//! read back (a commit's batch in whole chains and single steps, see `lua/commit.lua`).

use super::*;

/// The contexts a worker holds after its commits (run → version and bytes), for items whose
/// context a take reply leaves out.
pub(super) type Held<'a> = HashMap<&'a str, (u64, &'a [u8])>;

/// A take reply (see `lua/take.lua`): `Ok(items)` or `Err(ms until something is due)`
/// (`Some(0)`: call again at once).
pub(super) fn parse_take(
    r: Reply,
    worker: &WorkerId,
    held: &Held<'_>,
) -> Result<Result<Vec<Taken>, Option<u64>>, DistributedError> {
    if r.int(0) == Some(2) {
        // Nothing leased yet, but entries were left unexamined: due now.
        return Ok(Err(Some(0)));
    }
    if r.int(0) != Some(1) {
        let due = r.int(1).filter(|d| *d >= 0).map(|d| d as u64);
        return Ok(Err(due));
    }
    let count = r.int(1).unwrap_or_default().max(0) as usize;
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let b = 2 + k * 11;
        let run_id = r.text(b);
        let item_id: ItemId = r.text(b + 1).parse().map_err(|_| malformed("item id"))?;
        let version = r.int(b + 10).unwrap_or_default() as u64;
        let context = if r.int(b + 8) == Some(1) {
            // Left out: the worker holds this version (from its own commit).
            held.get(run_id.as_str())
                .filter(|(v, _)| *v == version)
                .map(|(v, bytes)| VersionedContext::new(bytes.to_vec(), *v))
        } else {
            Some(VersionedContext::new(r.bytes(b + 9), version))
        };
        let lease = Lease::new(
            run_id,
            item_id,
            r.int(b + 2).unwrap_or_default() as u64,
            worker.clone(),
        );
        out.push(
            Taken::new(lease, r.text(b + 4), r.bytes(b + 3))
                .with_attempt(
                    r.int(b + 5).unwrap_or(1) as u32,
                    r.int(b + 6).unwrap_or(1) as u32,
                )
                .with_deadline(
                    r.int(b + 7)
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(time_ms),
                )
                .with_context(context),
        );
    }
    if out.is_empty() {
        return Ok(Err(Some(0)));
    }
    Ok(Ok(out))
}

/// One step's answer to a commit or failure report: its kind and its detail, the first two
/// values of `row`.
pub(super) fn commit_outcome(row: &[Value]) -> Result<CommitOutcome, DistributedError> {
    match str_at(row, 0).unwrap_or_default() {
        "ok" => {
            let fin = str_at(row, 1).unwrap_or_default();
            Ok(CommitOutcome::Committed {
                finished: (!fin.is_empty()).then(|| run_status_of(fin)),
            })
        }
        "conflict" => Ok(CommitOutcome::ContextConflict {
            current: int_at(row, 1).unwrap_or_default() as u64,
        }),
        "lost" => Ok(CommitOutcome::LeaseLost),
        "inactive" => Ok(CommitOutcome::RunInactive(run_status_of(&text_at(row, 1)))),
        _ => Err(malformed(&format!("commit answered `{}`", text_at(row, 0)))),
    }
}

/// The arguments of one step in the commit script (see `lua/commit.lua`).
pub(super) fn commit_args(
    inv: &mut crate::scripts::Call<'_>,
    c: &CommitItem<'_>,
) -> Result<(), DistributedError> {
    let (lease, step) = (c.lease, c.step);
    inv.arg(&lease.run_id)
        .arg(lease.item_id.to_string())
        .arg(lease.token)
        .arg(
            step.require_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    match &step.context {
        Some((base, bytes)) => inv.arg(base.to_string()).arg(bytes.as_slice()),
        None => inv.arg("").arg(""),
    };
    inv.arg(c.held.map(|(v, _)| v.to_string()).unwrap_or_default());
    inv.arg(&step.node).arg(step.duration.as_micros() as u64);
    inv.arg(lease.worker.as_str());
    match c.keep_successor {
        Some(timeout) if c.kept > 0 && !step.successors.is_empty() => inv
            .arg(timeout.as_millis() as u64)
            .arg(c.kept.min(step.successors.len())),
        _ => inv.arg("").arg(0),
    };
    inv.arg(step.successors.len());
    for s in &step.successors {
        inv.arg(s.id.to_string())
            .arg(&s.node)
            .arg(s.bytes.as_slice());
    }
    inv.arg(step.outputs.len());
    for o in &step.outputs {
        inv.arg(o.to_string());
    }
    inv.arg(step.handled_failures.len());
    for e in &step.handled_failures {
        inv.arg(serde_json::to_string(e).map_err(|e| DistributedError::Codec(e.to_string()))?);
    }
    Ok(())
}

/// The indexes of the steps that go one by one (those in none of `chains`), in order.
pub(super) fn single_steps(len: usize, chains: &[Vec<usize>]) -> Vec<usize> {
    let mut in_chain = vec![false; len];
    for &i in chains.iter().flatten() {
        in_chain[i] = true;
    }
    (0..len).filter(|&i| !in_chain[i]).collect()
}

/// The contexts this worker's applied steps left it holding, per run: a take of those runs at
/// those versions leaves them out of its reply.
pub(super) fn held_after<'c>(
    commits: &[CommitItem<'c>],
    outcomes: &[Option<CommitOutcome>],
) -> Held<'c> {
    let mut held = Held::new();
    for (c, outcome) in commits.iter().zip(outcomes) {
        if let (Some(CommitOutcome::Committed { .. }), Some(context)) = (outcome, c.held) {
            held.insert(c.lease.run_id.as_str(), context);
        }
    }
    held
}

/// The steps of `commits` that go as whole chains (see `lua/commit.lua`): per chain, the
/// indexes of its steps, in order. A run's steps are one when they are all of its steps in
/// the batch, run from its first item on (each later one a successor kept by one before it,
/// and each successor kept and a later step: a chain, or a tree such as a fan and its
/// leaves), one of them makes an output, none records an error or requires a version, and
/// their context changes follow each other.
pub(super) fn whole_chains(commits: &[CommitItem<'_>]) -> Vec<Vec<usize>> {
    let mut runs: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut of_run: HashMap<&str, usize> = HashMap::new();
    for (i, c) in commits.iter().enumerate() {
        let run = c.lease.run_id.as_str();
        match of_run.get(run) {
            Some(&r) => runs[r].1.push(i),
            None => {
                of_run.insert(run, runs.len());
                runs.push((run, vec![i]));
            }
        }
    }
    runs.into_iter()
        .map(|(_, steps)| steps)
        .filter(|steps| is_whole_chain(steps.iter().map(|&i| &commits[i])))
        .collect()
}

/// Whether `steps` (one run's, in order) are a whole chain: see [`whole_chains`].
fn is_whole_chain<'a, 'b: 'a>(steps: impl Iterator<Item = &'a CommitItem<'b>>) -> bool {
    // The successors made so far that no step has been yet, by the worker that keeps them.
    let mut open: Vec<(ItemId, &WorkerId)> = Vec::new();
    let (mut outputs, mut version, mut first) = (false, None, true);
    for c in steps {
        let kept = if first {
            c.lease.item_id == ItemId::ROOT && c.lease.token != KEPT_LEASE_TOKEN
        } else {
            let at = open
                .iter()
                .position(|&(id, worker)| id == c.lease.item_id && *worker == c.lease.worker);
            match at {
                Some(at) => {
                    open.swap_remove(at);
                    c.lease.token == KEPT_LEASE_TOKEN
                }
                None => false,
            }
        };
        first = false;
        let successors = &c.step.successors;
        let keeps_all = successors.is_empty() || c.keeps(successors.len() - 1);
        if !kept
            || !keeps_all
            || !c.step.handled_failures.is_empty()
            || c.step.require_version.is_some()
        {
            return false;
        }
        if let Some((base, _)) = &c.step.context {
            if version.is_some_and(|v| v != *base) {
                return false;
            }
            version = Some(base + 1);
        }
        outputs |= !c.step.outputs.is_empty();
        open.extend(successors.iter().map(|s| (s.id, &c.lease.worker)));
    }
    !first && open.is_empty() && outputs
}

/// The arguments of the whole chain `chain` of `commits` (see `lua/commit.lua`).
pub(super) fn chain_args(
    inv: &mut crate::scripts::Call<'_>,
    commits: &[CommitItem<'_>],
    chain: &[usize],
) {
    let steps = || chain.iter().map(|&i| &commits[i]);
    let Some(first) = steps().next() else {
        return;
    };
    inv.arg(&first.lease.run_id)
        .arg(first.lease.item_id.to_string())
        .arg(first.lease.token)
        .arg(chain.len())
        .arg(first_timings(steps().map(|c| c.step)));
    let (mut base, mut changes, mut bytes, mut held) = (None, 0u64, &[][..], None);
    for c in steps() {
        match (&c.step.context, c.held) {
            (Some((from, after)), _) => {
                base.get_or_insert(*from);
                changes += 1;
                bytes = after.as_slice();
                held = Some(from + 1);
            }
            (None, Some((version, _))) => held = Some(version),
            (None, None) => {}
        }
    }
    inv.arg(base.map(|b| b.to_string()).unwrap_or_default())
        .arg(bytes)
        .arg(changes)
        .arg(held.map(|v| v.to_string()).unwrap_or_default());
    inv.arg(steps().map(|c| c.step.outputs.len()).sum::<usize>());
    for o in steps().flat_map(|c| &c.step.outputs) {
        inv.arg(o.to_string());
    }
}

/// The node timings field of a run whose first committed steps are `steps` (see
/// `lua/common/timings.lua`): `<node> <count> <total µs> <max µs>` per node, in the order the
/// nodes first ran, joined by `;`.
fn first_timings<'a>(
    steps: impl Iterator<Item = &'a floxide_core::distributed::StepCommit>,
) -> String {
    let mut nodes: Vec<(&str, u64, u64, u64)> = Vec::new();
    for step in steps {
        let micros = step.duration.as_micros() as u64;
        match nodes.iter_mut().find(|(node, ..)| *node == step.node) {
            Some((_, count, total, max)) => {
                *count += 1;
                *total += micros;
                *max = (*max).max(micros);
            }
            None => nodes.push((&step.node, 1, micros, micros)),
        }
    }
    let segments: Vec<String> = nodes
        .iter()
        .map(|(node, count, total, max)| format!("{node} {count} {total} {max}"))
        .collect();
    segments.join(";")
}

/// The outcomes of a commit's steps gathered from several answers, each step's answered
/// (else a malformed reply).
pub(super) fn all_answered(
    outcomes: Vec<Option<CommitOutcome>>,
) -> Result<Vec<CommitOutcome>, DistributedError> {
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| malformed("a step of a commit was not answered")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floxide_core::distributed::{NewItem, StepCommit};

    /// A step of node `node` making `successors` (ids) and `outputs` outputs.
    fn step(node: &str, successors: &[ItemId], outputs: usize) -> StepCommit {
        let mut step = StepCommit::new(node);
        step.successors = successors
            .iter()
            .map(|&id| NewItem::new(id, "n", Vec::new()))
            .collect();
        step.outputs = vec![serde_json::json!(1); outputs];
        step
    }

    fn lease(run: &str, item: ItemId, token: u64) -> Lease {
        Lease::new(run, item, token, WorkerId::from("w"))
    }

    #[test]
    fn a_chains_timings_are_counted_per_node_in_the_order_the_nodes_first_ran() {
        let timed = |node: &str, micros: u64| {
            let mut step = step(node, &[], 0);
            step.duration = Duration::from_micros(micros);
            step
        };
        let steps = [timed("a", 300), timed("b", 200), timed("a", 100)];
        assert_eq!(first_timings(steps.iter()), "a 2 400 300;b 1 200 200");
        assert_eq!(first_timings([].iter()), "");
    }

    #[test]
    fn a_runs_steps_from_its_first_item_to_its_end_go_as_a_whole_chain() {
        let keep = Duration::from_secs(1);
        let (a, b) = (ItemId::ROOT, ItemId::ROOT.child(0));
        let (la, lb) = (lease("r", a, 3), lease("r", b, KEPT_LEASE_TOKEN));
        let other = lease("s", ItemId::ROOT.child(5), 1);
        let (sa, sb, so) = (step("a", &[b], 0), step("b", &[], 1), step("x", &[], 1));
        let batch = [
            CommitItem::new(&la, &sa).with_successor_kept(keep),
            CommitItem::new(&other, &so),
            CommitItem::new(&lb, &sb),
        ];
        assert_eq!(whole_chains(&batch), vec![vec![0, 2]]);

        // Not kept, not from the first item, no output, an unchained context: one by one.
        let not_kept = [CommitItem::new(&la, &sa), CommitItem::new(&lb, &sb)];
        assert!(whole_chains(&not_kept).is_empty());
        let later = lease("r", ItemId::ROOT.child(9), 1);
        assert!(whole_chains(&[CommitItem::new(&later, &sb)]).is_empty());
        let silent = step("b", &[], 0);
        let no_output = [
            CommitItem::new(&la, &sa).with_successor_kept(keep),
            CommitItem::new(&lb, &silent),
        ];
        assert!(whole_chains(&no_output).is_empty());
        let (mut ca, mut cb) = (sa.clone(), sb.clone());
        ca.context = Some((0, b"1".to_vec()));
        cb.context = Some((0, b"2".to_vec()));
        let unchained = [
            CommitItem::new(&la, &ca).with_successor_kept(keep),
            CommitItem::new(&lb, &cb),
        ];
        assert!(whole_chains(&unchained).is_empty());
        cb.context = Some((1, b"2".to_vec()));
        let chained = [
            CommitItem::new(&la, &ca).with_successor_kept(keep),
            CommitItem::new(&lb, &cb),
        ];
        assert_eq!(whole_chains(&chained), vec![vec![0, 1]]);
    }

    #[test]
    fn a_fan_and_all_its_kept_leaves_go_as_a_whole_chain() {
        let keep = Duration::from_secs(1);
        let leaves: Vec<ItemId> = (0..3).map(|n| ItemId::ROOT.child(n)).collect();
        let fan = lease("r", ItemId::ROOT, 3);
        let kept: Vec<Lease> = leaves
            .iter()
            .map(|&l| lease("r", l, KEPT_LEASE_TOKEN))
            .collect();
        let (sf, sl) = (step("f", &leaves, 0), step("l", &[], 1));
        let tree = |count: usize, leaves: &[usize]| {
            let mut batch = vec![CommitItem::new(&fan, &sf).with_successors_kept(keep, count)];
            batch.extend(leaves.iter().map(|&n| CommitItem::new(&kept[n], &sl)));
            whole_chains(&batch)
        };
        // Any order of the leaves, each once, all kept.
        assert_eq!(tree(3, &[2, 0, 1]), vec![vec![0, 1, 2, 3]]);
        // A leaf missing or twice, or one not kept: one by one.
        assert!(tree(3, &[0, 1]).is_empty());
        assert!(tree(3, &[0, 1, 1]).is_empty());
        assert!(tree(2, &[0, 1, 2]).is_empty());
        // A leaf kept by another worker's step is not this tree's.
        let stranger = Lease::new("r", leaves[2], KEPT_LEASE_TOKEN, WorkerId::from("v"));
        let batch = [
            CommitItem::new(&fan, &sf).with_successors_kept(keep, 3),
            CommitItem::new(&kept[0], &sl),
            CommitItem::new(&kept[1], &sl),
            CommitItem::new(&stranger, &sl),
        ];
        assert!(whole_chains(&batch).is_empty());
    }
}
