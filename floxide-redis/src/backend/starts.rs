//! Single starts sent together: while a partition's start call is in flight, the starts that
//! arrive meanwhile wait and go in its next call, a hundred at most. A lone start goes at once,
//! from its caller (batching never waits to fill a batch); many concurrent ones cost the
//! server one script call per batch instead of one each.
//!
//! Queued starts are sent by a task of their own, never inside another caller's future, so a
//! caller that gives up (its future dropped) cannot leave the others' starts half sent.

use std::collections::HashMap;
use std::sync::Mutex;

use floxide_core::distributed::{DistributedError, RunId, StartRun};
use tokio::sync::oneshot;

use super::admin::START_BATCH;
use super::RedisBackend;
use crate::reply::malformed;

/// The answer to a start.
type Answer = Result<RunId, DistributedError>;

/// A start waiting for its partition's next call, and where its answer goes.
type Waiting = (RunId, StartRun, oneshot::Sender<Answer>);

/// The single starts of a backend (shared by its clones): per partition prefix whose start
/// call is in flight, the starts waiting for the next one (a partition with no entry has none
/// in flight).
#[derive(Default)]
pub(super) struct StartQueues(Mutex<HashMap<String, Vec<Waiting>>>);

impl std::fmt::Debug for StartQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartQueues")
    }
}

/// When a start goes: now, by its caller, or later, with its answer sent here.
enum Turn {
    Now(RunId, StartRun),
    Later(oneshot::Receiver<Answer>),
}

impl StartQueues {
    /// Queues a start for partition `pfx`, unless none of the partition's calls is in flight:
    /// then the caller sends it at once (and the partition has a call in flight).
    fn push(&self, pfx: &str, run_id: RunId, start: StartRun) -> Turn {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match queues.get_mut(pfx) {
            Some(waiting) => {
                let (answer, answered) = oneshot::channel();
                waiting.push((run_id, start, answer));
                Turn::Later(answered)
            }
            None => {
                queues.insert(pfx.to_owned(), Vec::new());
                Turn::Now(run_id, start)
            }
        }
    }

    /// The next call's starts for `pfx` (those whose caller still waits, a hundred at most);
    /// empty, and the partition free, when none waits.
    fn next_call(&self, pfx: &str) -> Vec<Waiting> {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(waiting) = queues.get_mut(pfx) else {
            return Vec::new();
        };
        waiting.retain(|(_, _, answer)| !answer.is_closed());
        let n = waiting.len().min(START_BATCH);
        let call: Vec<Waiting> = waiting.drain(..n).collect();
        if call.is_empty() {
            queues.remove(pfx);
        }
        call
    }
}

impl RedisBackend {
    /// Starts run `run_id` (placed in partition `pfx`): at once when none of the partition's
    /// start calls is in flight, else in its next call.
    pub(super) async fn start_queued(
        &self,
        pfx: String,
        run_id: RunId,
        start: StartRun,
    ) -> Result<RunId, DistributedError> {
        match self.starts.push(&pfx, run_id, start) {
            Turn::Now(run_id, start) => {
                // The starts queued meanwhile go once this call is over (or abandoned).
                let _next = Sender {
                    backend: self.clone(),
                    pfx: pfx.clone(),
                    hand_over: true,
                    done: false,
                };
                let mut answers = self.start_chunk(vec![(run_id, start)]).await;
                answers
                    .pop()
                    .unwrap_or_else(|| Err(malformed("the start was not answered")))
            }
            Turn::Later(answered) => answered
                .await
                .unwrap_or_else(|_| Err(malformed("the start's sender stopped before answering"))),
        }
    }

    /// Sends partition `pfx`'s waiting starts, a call at a time, until none waits.
    async fn send_starts(self, pfx: String) {
        let mut sender = Sender {
            backend: self.clone(),
            pfx: pfx.clone(),
            hand_over: false,
            done: false,
        };
        loop {
            let call = self.starts.next_call(&pfx);
            if call.is_empty() {
                // (`next_call` marked the partition free: a start may already be on its way.)
                sender.done = true;
                return;
            }
            let (starts, answers): (Vec<(RunId, StartRun)>, Vec<_>) = call
                .into_iter()
                .map(|(run_id, start, answer)| ((run_id, start), answer))
                .unzip();
            for (answer, result) in answers.into_iter().zip(self.start_chunk(starts).await) {
                // (A caller that gave up meanwhile is not told.)
                let _ = answer.send(result);
            }
        }
    }
}

/// The end of a partition's start call made by a caller (`hand_over`: the starts queued
/// meanwhile go to a sender task), or of its sender task (which stops once none waits). Should
/// a sender stop before its queue is empty (its task dropped as the runtime shuts down, or a
/// panic), the starts still waiting are answered with an error, and the next start goes at
/// once.
struct Sender {
    backend: RedisBackend,
    pfx: String,
    hand_over: bool,
    /// A sender task that found its queue empty (and so marked the partition free).
    done: bool,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queues = self
            .backend
            .starts
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let waiting = queues
            .get(&self.pfx)
            .is_some_and(|waiting| !waiting.is_empty());
        if self.hand_over && waiting {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(queues);
                runtime.spawn(self.backend.clone().send_starts(self.pfx.clone()));
                return;
            }
        }
        // (Answers dropped unsent: their callers learn that the sender stopped.)
        queues.remove(&self.pfx);
    }
}
