//! A model-based check: random sequences of takes, commits, failures, lease expiries and
//! operator requests, applied to the backend and to a model built on the run state machine
//! (`floxide::distributed::machine`); every answer and every run's status must agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::distributed::machine::{self, ControlEffect, FailureEffect, RunState};
use crate::distributed::*;
use crate::ItemId;

/// Sequences run by [`model_based_sequences_agree_with_the_machine`].
const SEQUENCES: u64 = 16;
/// Operations per sequence.
const OPS: usize = 60;
/// A lease that never runs out during a check (expiries are made on purpose).
const LONG: Duration = Duration::from_secs(600);

/// An item as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// Waiting to be taken (held while its run is paused or failed).
    Ready,
    /// Leased under this token.
    Leased(u64),
    /// Leased under this token, which ran out: the backend may have taken it back already.
    Expired(u64),
    /// Failed, its retry due in an hour.
    Delayed,
    /// Committed.
    Done,
    /// Dead-lettered.
    Dead,
}

impl Item {
    fn outstanding(self) -> bool {
        matches!(
            self,
            Item::Ready | Item::Leased(_) | Item::Expired(_) | Item::Delayed
        )
    }
}

#[derive(Debug, Clone)]
struct Run {
    status: RunStatus,
    has_output: bool,
    items: BTreeMap<ItemId, Item>,
}

impl Run {
    fn state(&self) -> RunState {
        RunState {
            status: self.status,
            outstanding: self.items.values().filter(|i| i.outstanding()).count() as u64,
            has_output: self.has_output,
        }
    }
}

/// The model and the log of what was done (printed when a check fails).
struct Model {
    runs: BTreeMap<RunId, Run>,
    /// Every lease handed out, for commits with stale tokens.
    leases: Vec<Lease>,
    log: Vec<String>,
    seed: u64,
}

impl Model {
    fn fail(&self, what: String) -> ! {
        panic!(
            "model-based check, seed {}: {what}\noperations:\n  {}",
            self.seed,
            self.log.join("\n  ")
        )
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// The status a run's item refusal reports: inactive once the run is over.
    fn refused(&self, run: &str) -> CommitOutcome {
        let status = self.runs[run].status;
        if machine::accepts_results(status) {
            CommitOutcome::LeaseLost
        } else {
            CommitOutcome::RunInactive(status)
        }
    }
}

fn options() -> TakeOptions {
    TakeOptions {
        lease_timeout: LONG,
        max_deliveries: 1000,
    }
}

fn new_id(rng: &mut fastrand::Rng) -> ItemId {
    ItemId::from_u128(rng.u128(1..))
}

/// G2/G7/G9: random sequences of `take`, `commit`, `fail`, lease expiries, `cancel`, `pause`
/// and `resume` give the answers the run state machine predicts, on any backend; finally
/// every item still ready is delivered.
pub async fn model_based_sequences_agree_with_the_machine<B: Backend>(backend: B) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    for seed in 0..SEQUENCES {
        sequence(&backend, seed).await;
    }
}

async fn sequence(backend: &Arc<dyn Backend>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let workflow = format!("Model{seed}-{}", new_run_id());
    let me = WorkerId::from("model");
    let mut m = Model {
        runs: BTreeMap::new(),
        leases: Vec::new(),
        log: Vec::new(),
        seed,
    };
    for _ in 0..OPS {
        let op = rng.u32(0..100);
        match op {
            0..=11 if m.runs.len() < 6 => start(backend, &mut m, &mut rng, &workflow).await,
            0..=29 => take(backend, &mut m, &mut rng, &workflow, &me).await,
            30..=59 => commit(backend, &mut m, &mut rng).await,
            60..=69 => fail(backend, &mut m, &mut rng).await,
            70..=77 => expire(backend, &mut m, &mut rng).await,
            _ => control(backend, &mut m, &mut rng).await,
        }
        statuses(backend, &m).await;
    }
    drain(backend, &mut m, &workflow, &me).await;
    for run in m.runs.keys() {
        let _ = backend.control(run, RunAction::Cancel).await;
    }
}

async fn start(backend: &Arc<dyn Backend>, m: &mut Model, rng: &mut fastrand::Rng, workflow: &str) {
    let id = new_id(rng);
    let start = StartRun::new(
        new_run_id(),
        workflow,
        b"null".to_vec(),
        NewItem::new(id, "n", b"0".to_vec()),
    );
    let run = backend
        .start_run(start)
        .await
        .unwrap_or_else(|e| m.fail(format!("start failed: {e}")));
    m.log.push(format!("start {run}"));
    m.runs.insert(
        run,
        Run {
            status: RunStatus::Pending,
            has_output: false,
            items: BTreeMap::from([(id, Item::Ready)]),
        },
    );
}

async fn take(
    backend: &Arc<dyn Backend>,
    m: &mut Model,
    rng: &mut fastrand::Rng,
    workflow: &str,
    me: &WorkerId,
) {
    let max = rng.usize(1..=4);
    let request = TakeRequest::new(workflow, me, options()).with_max(max);
    let taken = backend
        .take_batch(request, Duration::ZERO)
        .await
        .unwrap_or_else(|e| m.fail(format!("take failed: {e}")));
    m.log.push(format!("take {max} -> {}", taken.len()));
    let ready = m
        .runs
        .values()
        .filter(|r| machine::takes_items(r.status))
        .flat_map(|r| r.items.values())
        .filter(|i| **i == Item::Ready)
        .count();
    m.check(taken.len() <= max, || {
        format!("a take of {max} leased {}", taken.len())
    });
    m.check(ready == 0 || !taken.is_empty(), || {
        format!("{ready} items were ready, the take leased none")
    });
    for t in taken {
        let lease = t.lease.clone();
        let Some(run) = m.runs.get_mut(&lease.run_id) else {
            m.fail(format!("took an item of an unknown run {}", lease.run_id));
        };
        let status = run.status;
        let state = run.items.get(&lease.item_id).copied();
        let takeable = matches!(state, Some(Item::Ready | Item::Expired(_)));
        if !(takeable && machine::takes_items(status)) {
            m.fail(format!(
                "took item {} of run {} ({status}) in state {state:?}",
                lease.item_id, lease.run_id
            ));
        }
        run.items.insert(lease.item_id, Item::Leased(lease.token));
        if run.status == RunStatus::Pending {
            run.status = RunStatus::Running;
        }
        m.log.push(format!(
            "  leased {} of {} token {}",
            lease.item_id, lease.run_id, lease.token
        ));
        m.leases.push(lease);
    }
}

/// A lease to report on: mostly a current one, sometimes a stale one.
fn pick_lease(m: &Model, rng: &mut fastrand::Rng) -> Option<Lease> {
    if m.leases.is_empty() {
        return None;
    }
    let current: Vec<&Lease> =
        m.leases
            .iter()
            .filter(|l| {
                m.runs[&l.run_id].items.get(&l.item_id).is_some_and(
                    |i| matches!(i, Item::Leased(t) | Item::Expired(t) if *t == l.token),
                )
            })
            .collect();
    if !current.is_empty() && rng.u32(0..10) < 8 {
        return Some(current[rng.usize(0..current.len())].clone());
    }
    Some(m.leases[rng.usize(0..m.leases.len())].clone())
}

async fn commit(backend: &Arc<dyn Backend>, m: &mut Model, rng: &mut fastrand::Rng) {
    let Some(lease) = pick_lease(m, rng) else {
        return;
    };
    let mut step = StepCommit::new("n");
    let successors: Vec<ItemId> = (0..rng.usize(0..=2)).map(|_| new_id(rng)).collect();
    for id in &successors {
        step.successors.push(NewItem::new(*id, "n", b"1".to_vec()));
    }
    if successors.is_empty() && rng.bool() {
        step.outputs.push(serde_json::json!(1));
    }
    let got = backend
        .commit(&lease, &step)
        .await
        .unwrap_or_else(|e| m.fail(format!("commit failed: {e}")));
    m.log.push(format!(
        "commit {} of {} token {} (+{} items, {} outputs) -> {got:?}",
        lease.item_id,
        lease.run_id,
        lease.token,
        successors.len(),
        step.outputs.len()
    ));
    let run = &m.runs[&lease.run_id];
    let state = run.items.get(&lease.item_id).copied();
    let holds = matches!(state, Some(Item::Leased(t)) if t == lease.token);
    let expired = matches!(state, Some(Item::Expired(t)) if t == lease.token);
    if !machine::accepts_results(run.status) || !(holds || expired) {
        let want = m.refused(&lease.run_id);
        m.check(got == want, || {
            format!("commit answered {got:?}, the model {want:?}")
        });
        return;
    }
    if expired && got == CommitOutcome::LeaseLost {
        // The backend took the expired lease back: the item is ready again.
        if let Some(run) = m.runs.get_mut(&lease.run_id) {
            run.items.insert(lease.item_id, Item::Ready);
        }
        return;
    }
    let run = m.runs.get_mut(&lease.run_id).expect("checked above");
    let before = run.status;
    run.items.insert(lease.item_id, Item::Done);
    for id in successors {
        run.items.insert(id, Item::Ready);
    }
    run.has_output |= !step.outputs.is_empty();
    let after = machine::after_commit(run.state());
    run.status = after;
    let finished = (after.is_finished() && after != before).then_some(after);
    let want = CommitOutcome::Committed { finished };
    m.check(got == want, || {
        format!("commit answered {got:?}, the model {want:?}")
    });
}

async fn fail(backend: &Arc<dyn Backend>, m: &mut Model, rng: &mut fastrand::Rng) {
    let Some(lease) = pick_lease(m, rng) else {
        return;
    };
    let retry = rng.bool();
    let report = StepFailed::new(
        "n",
        "model: deliberate failure",
        retry.then_some(Duration::from_secs(3600)),
    );
    let got = backend
        .fail(&lease, &report)
        .await
        .unwrap_or_else(|e| m.fail(format!("fail failed: {e}")));
    m.log.push(format!(
        "fail {} of {} token {} retry {retry} -> {got:?}",
        lease.item_id, lease.run_id, lease.token
    ));
    let run = &m.runs[&lease.run_id];
    let state = run.items.get(&lease.item_id).copied();
    let holds = matches!(state, Some(Item::Leased(t)) if t == lease.token);
    let expired = matches!(state, Some(Item::Expired(t)) if t == lease.token);
    if !machine::accepts_results(run.status) || !(holds || expired) {
        let want = m.refused(&lease.run_id);
        m.check(got == want, || {
            format!("fail answered {got:?}, the model {want:?}")
        });
        return;
    }
    if expired && got == CommitOutcome::LeaseLost {
        if let Some(run) = m.runs.get_mut(&lease.run_id) {
            run.items.insert(lease.item_id, Item::Ready);
        }
        return;
    }
    let run = m.runs.get_mut(&lease.run_id).expect("checked above");
    let before = run.status;
    let want = match machine::after_failure(before, retry) {
        FailureEffect::Inactive => CommitOutcome::RunInactive(before),
        FailureEffect::Retry => {
            run.items.insert(lease.item_id, Item::Delayed);
            CommitOutcome::Committed { finished: None }
        }
        FailureEffect::DeadLetter(status) => {
            run.items.insert(lease.item_id, Item::Dead);
            run.status = status;
            CommitOutcome::Committed {
                finished: (status != before).then_some(status),
            }
        }
    };
    m.check(got == want, || {
        format!("fail answered {got:?}, the model {want:?}")
    });
}

/// Makes one current lease run out (renewed for a millisecond, then waited for).
async fn expire(backend: &Arc<dyn Backend>, m: &mut Model, rng: &mut fastrand::Rng) {
    let leased: Vec<(RunId, ItemId, u64)> = m
        .runs
        .iter()
        .flat_map(|(id, r)| {
            r.items.iter().filter_map(move |(item, s)| match s {
                Item::Leased(t) if machine::accepts_results(r.status) => {
                    Some((id.clone(), *item, *t))
                }
                _ => None,
            })
        })
        .collect();
    if leased.is_empty() {
        return;
    }
    let (run, item, token) = leased[rng.usize(0..leased.len())].clone();
    let Some(lease) = m
        .leases
        .iter()
        .find(|l| l.run_id == run && l.item_id == item && l.token == token)
        .cloned()
    else {
        return;
    };
    let state = backend
        .heartbeat(&lease, Duration::from_millis(1))
        .await
        .unwrap_or_else(|e| m.fail(format!("heartbeat failed: {e}")));
    m.log.push(format!(
        "expire {item} of {run} token {token} (heartbeat {state:?})"
    ));
    m.check(matches!(state, LeaseState::Active(_)), || {
        format!("a held lease's heartbeat answered {state:?}")
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Some(r) = m.runs.get_mut(&run) {
        r.items.insert(item, Item::Expired(token));
    }
}

async fn control(backend: &Arc<dyn Backend>, m: &mut Model, rng: &mut fastrand::Rng) {
    if m.runs.is_empty() {
        return;
    }
    let ids: Vec<RunId> = m.runs.keys().cloned().collect();
    let run_id = ids[rng.usize(0..ids.len())].clone();
    let action = match rng.u32(0..20) {
        0..=2 => RunAction::Cancel,
        3..=10 => RunAction::Pause,
        _ => RunAction::Resume,
    };
    let got = backend.control(&run_id, action).await;
    m.log.push(format!(
        "{action:?} {run_id} -> {:?}",
        got.as_ref().map(|i| i.status)
    ));
    let run = m.runs.get_mut(&run_id).expect("a known run");
    let state = run.state();
    let dead = run.items.values().filter(|i| **i == Item::Dead).count() as u64;
    let revivable = if run.status == RunStatus::Failed {
        dead
    } else {
        0
    };
    let predicted = match action {
        RunAction::Cancel => machine::cancel(state.status),
        RunAction::Pause => machine::pause(state.status),
        RunAction::Resume => machine::resume(state, revivable),
    };
    let want = match predicted {
        Err(refused) => Err(refused.action),
        Ok(ControlEffect::Cancel) => Ok(RunStatus::Cancelled),
        Ok(ControlEffect::Pause) => Ok(RunStatus::Paused),
        Ok(ControlEffect::Resume(status)) => {
            if revivable > 0 {
                for item in run.items.values_mut() {
                    if *item == Item::Dead {
                        *item = Item::Ready;
                    }
                }
            }
            Ok(status)
        }
    };
    if let Ok(status) = want {
        run.status = status;
    }
    let got = match got {
        Ok(info) => Ok(info.status),
        Err(DistributedError::InvalidRunState { action, .. }) => Err(action),
        Err(e) => m.fail(format!("{action:?} failed: {e}")),
    };
    m.check(got == want, || {
        format!("{action:?} answered {got:?}, the model {want:?}")
    });
}

/// Every run's status agrees with the model.
async fn statuses(backend: &Arc<dyn Backend>, m: &Model) {
    for (id, run) in &m.runs {
        let info = backend
            .run_info(id)
            .await
            .unwrap_or_else(|e| m.fail(format!("run_info {id} failed: {e}")));
        m.check(info.status == run.status, || {
            format!(
                "run {id} is {} in the backend, {} in the model",
                info.status, run.status
            )
        });
    }
}

/// Resumes what is paused, then takes and commits until nothing is ready: every item the
/// model holds ready (or leased under a lease that ran out) is delivered, and each run ends
/// as the machine says.
async fn drain(backend: &Arc<dyn Backend>, m: &mut Model, workflow: &str, me: &WorkerId) {
    let paused: Vec<RunId> = m
        .runs
        .iter()
        .filter(|(_, r)| r.status == RunStatus::Paused)
        .map(|(id, _)| id.clone())
        .collect();
    for run in paused {
        let info = backend
            .control(&run, RunAction::Resume)
            .await
            .unwrap_or_else(|e| m.fail(format!("resume {run} failed: {e}")));
        let r = m.runs.get_mut(&run).expect("a known run");
        if let Ok(ControlEffect::Resume(status)) = machine::resume(r.state(), 0) {
            r.status = status;
        }
        m.check(info.status == m.runs[&run].status, || {
            format!("resumed run {run} is {}", info.status)
        });
    }
    // Leases still held are given back, so that their items are delivered again.
    let held: Vec<Lease> = m
        .leases
        .iter()
        .filter(|l| {
            matches!(m.runs[&l.run_id].items.get(&l.item_id), Some(Item::Leased(t)) if *t == l.token)
        })
        .cloned()
        .collect();
    for lease in held {
        backend
            .heartbeat(&lease, Duration::from_millis(1))
            .await
            .unwrap_or_else(|e| m.fail(format!("heartbeat failed: {e}")));
        if let Some(r) = m.runs.get_mut(&lease.run_id) {
            r.items.insert(lease.item_id, Item::Expired(lease.token));
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    m.log.push("drain".to_owned());
    for _ in 0..200 {
        let request = TakeRequest::new(workflow, me, options()).with_max(8);
        let taken = backend
            .take_batch(request, Duration::from_millis(50))
            .await
            .unwrap_or_else(|e| m.fail(format!("take failed: {e}")));
        if taken.is_empty() {
            break;
        }
        for t in taken {
            let step = StepCommit::new("n");
            let got = backend
                .commit(&t.lease, &step)
                .await
                .unwrap_or_else(|e| m.fail(format!("commit failed: {e}")));
            let Some(run) = m.runs.get_mut(&t.lease.run_id) else {
                m.fail(format!("took an item of an unknown run {}", t.lease.run_id));
            };
            let before = run.status;
            run.items.insert(t.lease.item_id, Item::Done);
            let after = machine::after_commit(run.state());
            run.status = after;
            let want = CommitOutcome::Committed {
                finished: (after.is_finished() && after != before).then_some(after),
            };
            m.log.push(format!(
                "  drained {} of {} -> {got:?}",
                t.lease.item_id, t.lease.run_id
            ));
            m.check(got == want, || {
                format!("drain commit answered {got:?}, the model {want:?}")
            });
        }
    }
    for (id, run) in &m.runs {
        let waiting = run
            .items
            .values()
            .filter(|i| matches!(i, Item::Ready | Item::Expired(_)))
            .count();
        m.check(!machine::takes_items(run.status) || waiting == 0, || {
            format!(
                "run {id} ({}) still has {waiting} undelivered items",
                run.status
            )
        });
    }
    statuses(backend, m).await;
}
