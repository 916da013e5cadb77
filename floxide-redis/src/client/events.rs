//! What the client hears: run events (for waiters on a run) and, on a cluster, the partitions'
//! wake-ups (for idle workers), and the tasks that listen for them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::PushKind;

use floxide_core::distributed::HeardOutputs;

use crate::RedisConfig;

use super::connect::cluster_builder;

/// The last run events, numbered: lets a waiter on one run ignore the others' events.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    /// Events as (number, run id); `None` stands for "any run" (after a reconnection,
    /// events may have been missed).
    events: std::collections::VecDeque<(u64, Option<String>)>,
    last: u64,
}

impl RecentEvents {
    const KEEP: usize = 4096;

    fn record(&mut self, run: Option<String>) -> u64 {
        self.last += 1;
        if self.events.len() == Self::KEEP {
            self.events.pop_front();
        }
        self.events.push_back((self.last, run));
        self.last
    }

    /// Whether an event after number `since` may concern `run`.
    pub(crate) fn touched_since(&self, since: u64, run: &str) -> bool {
        if self
            .events
            .front()
            .is_some_and(|(first, _)| *first > since + 1)
        {
            return true; // some events were dropped: assume the worst
        }
        self.events
            .iter()
            .rev()
            .take_while(|(n, _)| *n > since)
            .any(|(_, r)| r.as_deref().is_none_or(|r| r == run))
    }
}

/// What a subscribed channel carries.
#[derive(Debug, Clone, Copy)]
pub(super) enum Channel {
    /// Run events: the ids of the runs a script changed, one per line (`<id>\t<output>` for
    /// a run that completed with a short output).
    Runs,
    /// On a cluster: the name of a workflow that got ready work in partition `.0`.
    Wakes(u32),
}

/// Where the listener delivers what it hears.
pub(super) struct Events {
    pub(super) channels: std::collections::HashMap<String, Channel>,
    pub(super) recent: Arc<Mutex<RecentEvents>>,
    pub(super) heard: Arc<HeardOutputs>,
    pub(super) version: Arc<tokio::sync::watch::Sender<u64>>,
    pub(super) signals: Arc<floxide_core::distributed::RunSignals>,
    pub(super) wakes: Arc<Wakes>,
}

impl Events {
    /// Wakes the waiters on `run` (`None`: on every run, and every idle worker: after a
    /// dropped subscription, messages may have been missed).
    fn wake(&self, run: Option<String>) {
        match &run {
            Some(run) => self.signals.changed(run),
            None => {
                self.wakes.signal_all();
                self.signals.changed_all();
            }
        }
        let n = self
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(run);
        self.version.send_replace(n);
    }

    /// Handles a message on `channel`.
    fn message(&self, channel: &str, payload: Option<String>) {
        match (self.channels.get(channel), payload) {
            (Some(Channel::Runs), Some(runs)) => {
                for line in runs.split('\n') {
                    let (id, output) = match line.split_once('\t') {
                        Some((id, output)) => (id, Some(output)),
                        None => (line, None),
                    };
                    let Some(run) = HeardOutputs::run_of_line(id) else {
                        continue;
                    };
                    if let Some(output) = output {
                        // Known before its waiters wake.
                        self.heard.insert(&run, output.as_bytes().to_vec());
                    }
                    self.wake(Some(run));
                }
            }
            (Some(Channel::Wakes(p)), _) => self.wakes.signal(*p),
            _ => self.wake(None),
        }
    }
}

/// On a cluster, which partitions were told of new ready work: idle workers wait on it
/// instead of blocking on each partition's wake list (one blocking pop cannot span slots).
#[derive(Debug)]
pub(crate) struct Wakes {
    /// Per partition, the number of the last signal it got.
    signals: Vec<std::sync::atomic::AtomicU64>,
    /// The number of the last signal of any partition.
    last: tokio::sync::watch::Sender<u64>,
    /// Per workflow and partition, what the last take there found.
    queues: Mutex<std::collections::HashMap<String, Vec<Found>>>,
}

/// What the last take in one partition found for one workflow.
#[derive(Debug, Clone, Copy, Default)]
struct Found {
    /// When.
    at: Option<tokio::time::Instant>,
    /// Nothing ready, as of the partition's signal with this number (`None`: not known to be
    /// empty).
    empty_as_of: Option<u64>,
    /// When something becomes due there (a retry, an expiring lease).
    due: Option<tokio::time::Instant>,
}

impl Wakes {
    pub(super) fn new(partitions: u32) -> Self {
        Wakes {
            signals: (0..partitions)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            last: tokio::sync::watch::channel(0).0,
            queues: Mutex::default(),
        }
    }

    /// Runs `f` on what is known of `workflow`'s queues.
    fn with_found<T>(&self, workflow: &str, f: impl FnOnce(&mut Vec<Found>) -> T) -> T {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let found = queues
            .entry(workflow.to_owned())
            .or_insert_with(|| vec![Found::default(); self.signals.len()]);
        f(found)
    }

    /// Whether a take of `workflow` in partition `p` may find something: it was not found
    /// empty, was signalled since, has something due, or was last looked at `stale` ago or
    /// more. (A lease another process took after that look is not known here; looking again
    /// within a lease timeout learns its expiry before it expires.)
    pub(crate) fn worth_taking(
        &self,
        workflow: &str,
        p: u32,
        now: tokio::time::Instant,
        stale: Duration,
    ) -> bool {
        let signal = self.of(p);
        self.with_found(workflow, |found| {
            found.get(p as usize).is_none_or(|f| {
                f.empty_as_of.is_none_or(|seen| signal > seen)
                    || f.due.is_some_and(|d| d <= now)
                    || f.at.is_none_or(|at| now.duration_since(at) >= stale)
            })
        })
    }

    /// Records what a take of `workflow` in partition `p` found: ready work (`empty_as_of`
    /// `None`), or nothing as of signal `empty_as_of`, with something due at `due`.
    pub(crate) fn found(
        &self,
        workflow: &str,
        p: u32,
        empty_as_of: Option<u64>,
        due: Option<tokio::time::Instant>,
    ) {
        self.with_found(workflow, |found| {
            if let Some(f) = found.get_mut(p as usize) {
                *f = Found {
                    at: Some(tokio::time::Instant::now()),
                    empty_as_of,
                    due,
                };
            }
        });
    }

    /// The earliest time something becomes due in `workflow`'s partitions, or one of them
    /// becomes `stale`.
    pub(crate) fn next_due(&self, workflow: &str, stale: Duration) -> Option<tokio::time::Instant> {
        self.with_found(workflow, |found| {
            found
                .iter()
                .flat_map(|f| [f.due, f.at.map(|at| at + stale)])
                .flatten()
                .min()
        })
    }

    /// Partition `p` may have new ready work (this client's own writes signal it at once).
    pub(crate) fn signal(&self, p: u32) {
        self.last.send_modify(|n| {
            *n += 1;
            if let Some(s) = self.signals.get(p as usize) {
                s.store(*n, Ordering::SeqCst);
            }
        });
    }

    fn signal_all(&self) {
        self.last.send_modify(|n| {
            *n += 1;
            for s in &self.signals {
                s.store(*n, Ordering::SeqCst);
            }
        });
    }

    /// The number of the last signal of any partition.
    pub(crate) fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// The number of the last signal of partition `p`.
    pub(crate) fn of(&self, p: u32) -> u64 {
        self.signals
            .get(p as usize)
            .map_or(0, |s| s.load(Ordering::SeqCst))
    }

    /// Waits until a signal after number `seen` arrives, or `timeout` passes.
    pub(crate) async fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut rx = self.last.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n > seen)).await;
    }
}

/// Follows the run events of every partition, waking waiters; resubscribes after a
/// connection loss, waking everyone when the subscription drops and again once it is back
/// (events published in between are missed).
pub(super) async fn listen(
    client: redis::Client,
    events: Events,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let mut ok = true;
                for channel in events.channels.keys() {
                    if pubsub.subscribe(channel).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    backoff = Duration::from_millis(50);
                    // Events published while the subscription was down are lost: wake every
                    // waiter now that it is back, so that each one reads its run again. (Before
                    // the client is told it holds: a waiter that starts after the connect is
                    // not woken by it.)
                    events.wake(None);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        events.message(
                            message.get_channel_name(),
                            message.get_payload::<String>().ok(),
                        );
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "run event subscription failed; retrying"),
        }
        events.wake(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// [`listen`] on a cluster: sharded subscriptions (`SSUBSCRIBE`), so that each partition's
/// messages come from its own master only. When a master's connection drops (it died, and a
/// replica may be taking over) or the server ends a subscription (its slot moved to another
/// master), the subscriptions start over on a fresh connection, which learns the cluster's
/// current slots; every waiter is woken meanwhile and once they are back.
pub(super) async fn listen_cluster(
    config: RedisConfig,
    events: Events,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let subscribed = async {
            let client = cluster_builder(&config)
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "TLS", e)))?
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            // One channel per call: the channels of one `SSUBSCRIBE` must share a slot.
            for channel in events.channels.keys() {
                conn.ssubscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        match subscribed.await {
            Ok(conn) => {
                backoff = Duration::from_millis(50);
                // (Waiters first, then the client: see `listen`.)
                events.wake(None);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                while let Some(push) = rx.recv().await {
                    match push.kind {
                        PushKind::SMessage => {
                            let mut data = push.data.into_iter();
                            let channel: Option<String> =
                                data.next().and_then(|v| redis::from_redis_value(v).ok());
                            let payload: Option<String> =
                                data.next().and_then(|v| redis::from_redis_value(v).ok());
                            match channel {
                                Some(channel) => events.message(&channel, payload),
                                None => events.wake(None),
                            }
                        }
                        PushKind::Disconnection | PushKind::SUnsubscribe => break,
                        _ => {}
                    }
                }
                drop(conn);
            }
            Err(error) => tracing::debug!(%error, "run event subscription failed; retrying"),
        }
        events.wake(None);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
