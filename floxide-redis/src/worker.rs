//! The worker's path on Redis ([`WorkerBackend`]): batched takes over the partitions, one
//! commit script per partition that also takes the next batch, heartbeats, failures, releases.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use floxide_core::distributed::{
    CommitItem, CommitOutcome, CommitReply, DistributedError, Lease, LeaseState, StepFailed,
    TakeRequest, Taken, VersionedContext, WorkerBackend, WorkerId, WorkflowError, KEPT_LEASE_TOKEN,
};
use floxide_core::ItemId;
use redis::Value;

use crate::backend::{request_id, run_status_of, RedisBackend};
use crate::keys::Keys;
use crate::reply::{int_at, malformed, text_at, time_ms, Reply};
use crate::scripts::{function_missing, reload, Call};

/// The contexts a worker holds after its commits (run → version and bytes), for items whose
/// context a take reply leaves out.
type Held<'a> = HashMap<&'a str, (u64, &'a [u8])>;

/// A take reply (see `lua/take.lua`): `Ok(items)` or `Err(ms until something is due)`
/// (`Some(0)`: call again at once).
fn parse_take(
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
                .with_deadline(r.text(b + 7).parse::<u64>().ok().map(time_ms))
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
pub(crate) fn commit_outcome(row: &[Value]) -> Result<CommitOutcome, DistributedError> {
    match text_at(row, 0).as_str() {
        "ok" => {
            let fin = text_at(row, 1);
            Ok(CommitOutcome::Committed {
                finished: (!fin.is_empty()).then(|| run_status_of(&fin)),
            })
        }
        "conflict" => Ok(CommitOutcome::ContextConflict {
            current: int_at(row, 1).unwrap_or_default() as u64,
        }),
        "lost" => Ok(CommitOutcome::LeaseLost),
        "inactive" => Ok(CommitOutcome::RunInactive(run_status_of(&text_at(row, 1)))),
        other => Err(malformed(&format!("commit answered `{other}`"))),
    }
}

/// The arguments of one step in the commit script (see `lua/commit.lua`).
fn commit_args(
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
        Some(timeout) if step.successors.len() == 1 => inv.arg(timeout.as_millis() as u64),
        _ => inv.arg(""),
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
fn single_steps(len: usize, chains: &[Vec<usize>]) -> Vec<usize> {
    let mut in_chain = vec![false; len];
    for &i in chains.iter().flatten() {
        in_chain[i] = true;
    }
    (0..len).filter(|&i| !in_chain[i]).collect()
}

/// The contexts this worker's applied steps left it holding, per run: a take of those runs at
/// those versions leaves them out of its reply.
fn held_after<'c>(commits: &[CommitItem<'c>], outcomes: &[Option<CommitOutcome>]) -> Held<'c> {
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
/// the batch, run from its first item on (each but the last keeping its single successor,
/// which the next one is), the last makes no successor, one of them makes an output, none
/// records an error or requires a version, and their context changes follow each other.
fn whole_chains(commits: &[CommitItem<'_>]) -> Vec<Vec<usize>> {
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
    let mut before: Option<&CommitItem<'_>> = None;
    let (mut outputs, mut version) = (false, None);
    for c in steps {
        let kept = match before {
            None => c.lease.item_id == ItemId::ROOT && c.lease.token != KEPT_LEASE_TOKEN,
            Some(b) => {
                b.keep_successor.is_some()
                    && b.step.successors.len() == 1
                    && b.step.successors[0].id == c.lease.item_id
                    && c.lease.token == KEPT_LEASE_TOKEN
                    && c.lease.worker == b.lease.worker
            }
        };
        if !kept || !c.step.handled_failures.is_empty() || c.step.require_version.is_some() {
            return false;
        }
        if let Some((base, _)) = &c.step.context {
            if version.is_some_and(|v| v != *base) {
                return false;
            }
            version = Some(base + 1);
        }
        outputs |= !c.step.outputs.is_empty();
        before = Some(c);
    }
    before.is_some_and(|last| last.step.successors.is_empty()) && outputs
}

/// The arguments of the whole chain `chain` of `commits` (see `lua/commit.lua`).
fn chain_args(inv: &mut crate::scripts::Call<'_>, commits: &[CommitItem<'_>], chain: &[usize]) {
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
fn all_answered(
    outcomes: Vec<Option<CommitOutcome>>,
) -> Result<Vec<CommitOutcome>, DistributedError> {
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| malformed("a step of a commit was not answered")))
        .collect()
}

/// What a detached take sends back.
type TakeAnswer = Result<Result<Vec<Taken>, Option<u64>>, DistributedError>;

/// The receiving end of a detached take. Dropped before the answer was read (the caller
/// stopped waiting), it gives back whatever the take leased, even when the answer arrived
/// just before the drop.
struct Answer {
    rx: Option<tokio::sync::oneshot::Receiver<TakeAnswer>>,
    backend: RedisBackend,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(Ok(Ok(taken))) = rx.try_recv() {
                let backend = self.backend.clone();
                tokio::spawn(async move { release_all(&backend, taken).await });
            }
        }
    }
}

/// Releases items that nobody will execute.
async fn release_all(backend: &RedisBackend, taken: Vec<Taken>) {
    for item in taken {
        if let Err(error) = backend.release(&item.lease).await {
            tracing::warn!(%error, "could not release an item taken for a cancelled take; its lease will expire");
        }
    }
}

impl RedisBackend {
    /// The take script's call for up to `take.max` items in partition `pfx`, request `rid`.
    fn take_call<'a>(
        &'a self,
        pfx: &str,
        take: TakeRequest<'_>,
        woken: bool,
        rid: &str,
    ) -> Call<'a> {
        let scripts = &self.client().inner.scripts;
        let key = Keys::queue(pfx, take.workflow);
        let mut call = self.invoke(&scripts.take, key, pfx, rid);
        call.arg(take.workflow)
            .arg(take.worker.as_str())
            .arg(take.options.lease_timeout.as_millis() as u64)
            .arg(take.options.max_deliveries)
            .arg(take.max)
            .arg(if woken { "1" } else { "0" });
        call
    }

    /// Runs one take of up to `take.max` items in partition `pfx`: `Ok(items)` or
    /// `Err(ms until something is due)`.
    async fn take_in(
        &self,
        pfx: &str,
        take: TakeRequest<'_>,
        woken: bool,
    ) -> Result<Result<Vec<Taken>, Option<u64>>, DistributedError> {
        let call = self.take_call(pfx, take, woken, &request_id());
        let reply = self.script_reply(&call).await?;
        parse_take(reply, take.worker, &Held::new())
    }

    /// Waits up to `wait` on the wake list of the only partition `pfx`, and takes there as
    /// soon as it is woken (or the wait ends), in one round trip: the take is pipelined
    /// behind the blocking pop on the same connection, and the server runs it the moment the
    /// pop returns. (With several partitions the woken one is not known in advance: see
    /// [`block`](Self::block).)
    async fn wake_and_take(
        &self,
        pfx: &str,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Result<Vec<Taken>, Option<u64>>, DistributedError> {
        let rid = request_id();
        let call = self.take_call(pfx, take, true, &rid);
        let mut conn = self
            .client()
            .blocking_connection()
            .await
            .map_err(crate::reply::backend)?;
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg(Keys::wake(pfx, take.workflow))
            .arg(wait.as_secs_f64().max(0.001))
            .ignore();
        pipe.add_command(call.fcall(false));
        // A connection that died silently would block forever: bound the wait.
        let answered =
            tokio::time::timeout(wait + Duration::from_secs(2), pipe.query_async(&mut conn)).await;
        let reply = match answered {
            Ok(Ok(values)) => {
                self.client().give_back(conn);
                let values: Vec<Value> = values;
                let value = values
                    .into_iter()
                    .next()
                    .ok_or_else(|| malformed("a take after a wait was not answered"))?;
                Reply::from(value)?
            }
            Ok(Err(e)) if function_missing(&e) => {
                // The server lost the library (a restart): load it, then take on its own.
                let inner = &self.client().inner;
                reload(&inner.scripts, &mut conn)
                    .await
                    .map_err(crate::reply::backend)?;
                self.client().give_back(conn);
                return self.take_in(pfx, take, true).await;
            }
            // The take may have run and its answer been lost: the same request, marked as a
            // retry, answers with what it leased (or takes now if it never ran).
            Ok(Err(_)) | Err(_) => self.script_reply_retried(&call).await?,
        };
        parse_take(reply, take.worker, &Held::new())
    }

    /// [`take_in`](Self::take_in) in a task of its own, so that a caller that stops waiting
    /// (a worker shutting down drops its take) loses nothing: items leased by a take whose
    /// caller is gone are released by the task.
    async fn take_detached(
        &self,
        pfx: &str,
        take: TakeRequest<'_>,
        woken: bool,
        wait_first: Option<Duration>,
    ) -> Result<Result<Vec<Taken>, Option<u64>>, DistributedError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, pfx, workflow, worker) = (
            self.clone(),
            pfx.to_owned(),
            take.workflow.to_owned(),
            take.worker.clone(),
        );
        let (options, max) = (take.options, take.max);
        let releaser = self.clone();
        tokio::spawn(async move {
            let take = TakeRequest::new(&workflow, &worker, options).with_max(max);
            let result = match wait_first {
                Some(wait) => this.wake_and_take(&pfx, take, wait).await,
                None => this.take_in(&pfx, take, woken).await,
            };
            if let Err(Ok(Ok(taken))) = tx.send(result) {
                release_all(&this, taken).await;
            }
        });
        let mut answer = Answer {
            rx: Some(rx),
            backend: releaser,
        };
        let result = match answer.rx.as_mut() {
            Some(rx) => rx.await,
            None => return Err(DistributedError::Backend("no take in flight".to_owned())),
        };
        answer.rx = None;
        result.unwrap_or_else(|_| {
            Err(DistributedError::Backend(
                "the take task ended without an answer".to_owned(),
            ))
        })
    }

    /// Waits on `workflow`'s wake lists of every partition at once (one blocking pop over
    /// all of them: no polling, whatever the number of partitions).
    async fn block(&self, workflow: &str, wait: Duration) -> Result<(), DistributedError> {
        let lists: Vec<String> = self
            .keys()
            .all()
            .map(|p| Keys::wake(&self.keys().partition(p), workflow))
            .collect();
        let mut conn = self
            .client()
            .blocking_connection()
            .await
            .map_err(crate::reply::backend)?;
        let secs = wait.as_secs_f64().max(0.001);
        // A connection that died silently would block forever: bound the wait, and drop the
        // connection instead of reusing it when the server did not answer in time.
        let answered = tokio::time::timeout(
            wait + Duration::from_secs(2),
            redis::cmd("BLPOP")
                .arg(&lists)
                .arg(secs)
                .query_async::<Option<(String, String)>>(&mut conn),
        )
        .await;
        match answered {
            Ok(Ok(_)) => {
                self.client().give_back(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(crate::reply::backend(e)),
            Err(_) => Err(DistributedError::Backend(format!(
                "no answer from Redis to a blocking wait within {:?}",
                wait + Duration::from_secs(2)
            ))),
        }
    }

    /// [`WorkerBackend::take_batch`] on a cluster: takes only in partitions that may have
    /// work (not found empty since their last wake message, or with something due), and
    /// waits for the next wake message of any partition, without polling.
    async fn take_on_cluster(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let started = tokio::time::Instant::now();
        let wakes = &self.client().inner.wakes;
        let partitions = self.client().inner.config.partitions();
        let home = self.keys().partition_of(take.worker.as_str());
        let stale = take.options.lease_timeout;
        let mut woken = false;
        loop {
            let seen = wakes.last();
            let mut again = false;
            for k in 0..partitions {
                let p = (home + k) % partitions;
                let now = tokio::time::Instant::now();
                if !wakes.worth_taking(take.workflow, p, now, stale) {
                    continue;
                }
                // Read before the take: a signal after it makes the partition worth another.
                let signal = wakes.of(p);
                let pfx = self.keys().partition(p);
                match self.take_detached(&pfx, take, woken, None).await? {
                    Ok(taken) => {
                        wakes.found(take.workflow, p, None, None);
                        return Ok(taken);
                    }
                    Err(Some(0)) => {
                        wakes.found(take.workflow, p, None, None);
                        again = true;
                    }
                    Err(due) => wakes.found(
                        take.workflow,
                        p,
                        Some(signal),
                        due.map(|ms| now + Duration::from_millis(ms.max(1))),
                    ),
                }
            }
            if again {
                continue;
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut block = left;
            if let Some(due) = wakes.next_due(take.workflow, stale) {
                block = block.min(due.saturating_duration_since(tokio::time::Instant::now()));
            }
            wakes.wait_after(seen, block).await;
            woken = true;
        }
    }

    /// One commit script for `commits` (all of partition `pfx`), taking for the worker when
    /// `next` is given; whole chains go in short when `whole` (see `lua/commit.lua`), and
    /// those the script did not apply so go again, one step at a time.
    async fn commit_in(
        &self,
        pfx: &str,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
        whole: bool,
    ) -> Result<CommitReply, DistributedError> {
        let chains = if whole && !self.client().inner.config.routine_history {
            whole_chains(commits)
        } else {
            Vec::new()
        };
        let mut order = single_steps(commits.len(), &chains);
        let scripts = &self.client().inner.scripts;
        let mut inv = self.invoke(&scripts.commit, Keys::timers(pfx), pfx, &request_id());
        inv.arg(order.len());
        for &i in &order {
            commit_args(&mut inv, &commits[i])?;
        }
        inv.arg(chains.len());
        for chain in &chains {
            chain_args(&mut inv, commits, chain);
        }
        order.extend(chains.iter().flatten());
        match next {
            Some(n) => inv
                .arg(n.workflow)
                .arg(n.worker.as_str())
                .arg(n.options.lease_timeout.as_millis() as u64)
                .arg(n.options.max_deliveries)
                .arg(n.max)
                .arg("0"),
            None => inv.arg(""),
        };
        let reply = self.script_reply(&inv).await?;
        let mut parts = reply.0.into_iter();
        let rows = match parts.next() {
            Some(Value::Array(rows)) => rows,
            _ => return Err(malformed("commit reply without outcomes")),
        };
        // (Two values a step: see `lua/commit.lua`.)
        if rows.len() != 2 * commits.len() {
            return Err(malformed("commit reply with a wrong number of outcomes"));
        }
        let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; commits.len()];
        let mut again = Vec::new();
        for (&i, row) in order.iter().zip(rows.chunks_exact(2)) {
            if text_at(row, 0) == "again" {
                again.push(i);
            } else {
                outcomes[i] = Some(commit_outcome(row)?);
            }
        }
        let mut taken = match (next, parts.next()) {
            (Some(n), Some(value)) => {
                let held = held_after(commits, &outcomes);
                parse_take(Reply::from(value)?, n.worker, &held)?.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        if !again.is_empty() {
            let steps: Vec<CommitItem<'_>> = again.iter().map(|&i| commits[i]).collect();
            match Box::pin(self.commit_in(pfx, &steps, None, false)).await {
                Ok(reply) => {
                    for (&i, outcome) in again.iter().zip(reply.outcomes) {
                        outcomes[i] = Some(outcome);
                    }
                    taken.extend(reply.taken);
                }
                Err(error) => {
                    release_all(self, taken).await;
                    return Err(error);
                }
            }
        }
        Ok(CommitReply::new(all_answered(outcomes)?, taken))
    }
}

#[async_trait::async_trait]
impl WorkerBackend for RedisBackend {
    fn keeps_successors(&self) -> bool {
        true
    }

    async fn take_batch(
        &self,
        take: TakeRequest<'_>,
        wait: Duration,
    ) -> Result<Vec<Taken>, DistributedError> {
        let inner = &self.client().inner;
        if inner.config.is_cluster() {
            return self.take_on_cluster(take, wait).await;
        }
        let started = tokio::time::Instant::now();
        let partitions = inner.config.partitions();
        // One partition with functions: the wait and the take after it are one round trip.
        let fused_wait = partitions == 1 && inner.functions;
        let home = self.keys().partition_of(take.worker.as_str());
        let mut woken = false;
        let mut wait_first = None;
        loop {
            let mut next_due: Option<u64> = None;
            for k in 0..partitions {
                let pfx = self.keys().partition((home + k) % partitions);
                match self
                    .take_detached(&pfx, take, woken, wait_first.take())
                    .await?
                {
                    Ok(taken) => return Ok(taken),
                    Err(due) => {
                        next_due = match (next_due, due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    }
                }
            }
            // Entries left unexamined (a take examines a bounded number): go on at once.
            if next_due == Some(0) {
                continue;
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let mut block = left;
            if let Some(due) = next_due {
                block = block.min(Duration::from_millis(due.max(1)));
            }
            woken = true;
            if fused_wait {
                wait_first = Some(block);
            } else {
                self.block(take.workflow, block).await?;
            }
        }
    }

    async fn heartbeat(
        &self,
        lease: &Lease,
        lease_timeout: Duration,
    ) -> Result<LeaseState, DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let scripts = &self.client().inner.scripts;
        let mut inv = self.invoke(&scripts.heartbeat, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(lease_timeout.as_millis() as u64)
            .arg(lease.worker.as_str());
        let r = self.script_reply(&inv).await?;
        // A lease renewed with a shorter timeout expires earlier than an idle worker of this
        // client may have noted.
        self.may_have_work(&lease.run_id);
        Ok(match r.text(0).as_str() {
            "ok" => LeaseState::Active(run_status_of(&r.text(1))),
            _ => LeaseState::Lost,
        })
    }

    async fn load_context(&self, run_id: &str) -> Result<VersionedContext, DistributedError> {
        match self.run_fields(run_id, &["st", "ctx", "ver"]).await? {
            Some(f) => Ok(VersionedContext::new(
                f[1].clone().unwrap_or_default(),
                f[2].as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                    .unwrap_or_default(),
            )),
            None => Err(DistributedError::UnknownRun(run_id.to_owned())),
        }
    }

    async fn commit_batch(
        &self,
        commits: &[CommitItem<'_>],
        next: Option<TakeRequest<'_>>,
    ) -> Result<CommitReply, DistributedError> {
        // One script per partition (one hash slot each); the next take goes with the first.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, c) in commits.iter().enumerate() {
            let pfx = self.keys().partition_of_run(&c.lease.run_id);
            match groups.iter_mut().find(|(p, _)| *p == pfx) {
                Some((_, members)) => members.push(i),
                None => groups.push((pfx, vec![i])),
            }
        }
        if groups.len() <= 1 {
            let pfx = match groups.first() {
                Some((pfx, _)) => pfx.clone(),
                None => match next {
                    Some(n) => self
                        .keys()
                        .partition(self.keys().partition_of(n.worker.as_str())),
                    None => return Ok(CommitReply::default()),
                },
            };
            return self.commit_in(&pfx, commits, next, true).await;
        }
        let calls = groups.iter().enumerate().map(|(g, (pfx, members))| {
            let items: Vec<CommitItem<'_>> = members.iter().map(|&i| commits[i]).collect();
            let next = if g == 0 { next } else { None };
            async move { self.commit_in(pfx, &items, next, true).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; commits.len()];
        let mut taken = Vec::new();
        let mut failed = None;
        for ((_, members), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(reply) => {
                    for (&i, outcome) in members.iter().zip(reply.outcomes) {
                        outcomes[i] = Some(outcome);
                    }
                    taken.extend(reply.taken);
                }
                Err(error) => failed = Some(error),
            }
        }
        if let Some(error) = failed {
            // The caller cannot tell which steps applied: it lets their leases run out. What
            // the other scripts took for it goes back at once.
            release_all(self, taken).await;
            return Err(error);
        }
        Ok(CommitReply::new(all_answered(outcomes)?, taken))
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: &StepFailed,
    ) -> Result<CommitOutcome, DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let record = WorkflowError {
            work_item: lease.item_id,
            node: failure.node.clone(),
            error: failure.error.clone(),
            attempt: 0, // filled in by the fail script
            handled: false,
            timestamp: SystemTime::now(),
        };
        let scripts = &self.client().inner.scripts;
        let mut inv = self.invoke(&scripts.fail, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(
                serde_json::to_string(&record)
                    .map_err(|e| DistributedError::Codec(e.to_string()))?,
            )
            .arg(&failure.error)
            .arg(
                failure
                    .retry_after
                    .map(|d| (d.as_millis() as u64).to_string())
                    .unwrap_or_default(),
            )
            .arg(lease.worker.as_str());
        let r = self.script_reply(&inv).await?;
        self.may_have_work(&lease.run_id);
        commit_outcome(&r.0)
    }

    async fn release(&self, lease: &Lease) -> Result<(), DistributedError> {
        let pfx = self.keys().partition_of_run(&lease.run_id);
        let scripts = &self.client().inner.scripts;
        let mut inv = self.invoke(&scripts.release, Keys::timers(&pfx), &pfx, &request_id());
        inv.arg(&lease.run_id)
            .arg(lease.item_id.to_string())
            .arg(lease.token)
            .arg(lease.worker.as_str());
        self.script_reply(&inv).await?;
        self.may_have_work(&lease.run_id);
        Ok(())
    }

    async fn wait_run_change(&self, run_id: &str, timeout: Duration) {
        // Wake only for this run's events (every run's changes are published).
        let inner = &self.client().inner;
        let mut rx = inner.version.subscribe();
        let since = *rx.borrow_and_update();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            rx.borrow_and_update();
            let recent = inner
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.touched_since(since, run_id) {
                return;
            }
        }
    }
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
}
