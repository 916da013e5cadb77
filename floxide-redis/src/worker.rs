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
use crate::reply::{int_at, malformed, str_at, text_at, time_ms, Reply};
use crate::scripts::{function_missing, reload, Call};

mod wire;

use wire::*;

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

    /// The items a commit's fused take leased to `worker` (none when it found nothing: then
    /// the time work falls due is noted for the worker's wait).
    fn fused_take(
        &self,
        worker: &WorkerId,
        value: Value,
        commits: &[CommitItem<'_>],
        outcomes: &[Option<CommitOutcome>],
    ) -> Result<Vec<Taken>, DistributedError> {
        let held = held_after(commits, outcomes);
        let take = Reply::from(value)?;
        // (`{0, -2}`: the script made no take, so it did not look for due work.)
        let looked = take.int(1) != Some(-2);
        Ok(match parse_take(take, worker, &held)? {
            Ok(taken) => taken,
            Err(due) => {
                if looked {
                    self.idle.note(worker, due);
                }
                Vec::new()
            }
        })
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
        let (mut outcomes, again) = commit_rows(parts.next(), &order)?;
        let mut taken = match (next, parts.next()) {
            (Some(n), Some(value)) => self.fused_take(n.worker, value, commits, &outcomes)?,
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
        // The worker's last commit took nothing and looked for due work just now: wait at once.
        let hint = self.idle.fresh(take.worker);
        // (Due now: entries were left unexamined, or work fell due: take at once instead.)
        if let Some(due) = hint.filter(|due| fused_wait && !wait.is_zero() && *due != Some(0)) {
            woken = true;
            wait_first = Some(match due {
                Some(ms) => wait.min(Duration::from_millis(ms.max(1))),
                None => wait,
            });
        }
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

/// Workers whose last commit's fused take leased nothing, after looking for due work as an
/// idle take does: when that was, and when work falls due (`None`: nothing scheduled). Their
/// next `take_batch`, if it follows within [`IDLE_HINT`], blocks at once instead of taking
/// first: work queued meanwhile left a wake-up on the list its wait pops.
#[derive(Debug, Default)]
pub(crate) struct IdleHints(std::sync::Mutex<HashMap<String, (tokio::time::Instant, Option<u64>)>>);

/// How long a commit's empty take stands for the worker's idle take.
const IDLE_HINT: Duration = Duration::from_millis(20);

impl IdleHints {
    fn note(&self, worker: &WorkerId, due: Option<u64>) {
        let mut hints = self.0.lock().unwrap_or_else(|e| e.into_inner());
        hints.insert(worker.0.clone(), (tokio::time::Instant::now(), due));
    }

    /// The worker's hint, if it is fresh (taken: it stands for one wait only).
    fn fresh(&self, worker: &WorkerId) -> Option<Option<u64>> {
        let mut hints = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (at, due) = hints.remove(worker.0.as_str())?;
        let age = at.elapsed();
        (age < IDLE_HINT).then(|| due.map(|ms| ms.saturating_sub(age.as_millis() as u64)))
    }
}

/// A commit script's outcome rows (two values a step, see `lua/commit.lua`), each placed at
/// its step's index in `order` (the steps in the order sent), and the steps the script
/// answered `again` (whole chains it did not apply, to send one step at a time).
fn commit_rows(
    rows: Option<Value>,
    order: &[usize],
) -> Result<(Vec<Option<CommitOutcome>>, Vec<usize>), DistributedError> {
    let Some(Value::Array(rows)) = rows else {
        return Err(malformed("commit reply without outcomes"));
    };
    if rows.len() != 2 * order.len() {
        return Err(malformed("commit reply with a wrong number of outcomes"));
    }
    let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; order.len()];
    let mut again = Vec::new();
    for (&i, row) in order.iter().zip(rows.chunks_exact(2)) {
        if str_at(row, 0) == Some("again") {
            again.push(i);
        } else {
            outcomes[i] = Some(commit_outcome(row)?);
        }
    }
    Ok((outcomes, again))
}
