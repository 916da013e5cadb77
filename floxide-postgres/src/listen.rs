//! Wake-ups through `LISTEN/NOTIFY`: one listening connection per backend value; idle takers
//! and run waiters block on what it hears instead of polling.
//!
//! Writers notify inside their transaction (`pg_notify`), so a notification is delivered at
//! commit, once per transaction and channel. After the listening connection is lost, it
//! reconnects and wakes everyone (a notification may have been missed meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use floxide_core::distributed::{HeardOutputs, RunSignals};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;

/// What the listener wakes.
#[derive(Debug)]
pub(crate) struct Signals {
    /// New ready work (any workflow): idle takers look again.
    pub(crate) work: Notify,
    /// Some run's record changed (finished, paused, resumed, cancelled).
    pub(crate) runs: watch::Sender<u64>,
    /// The same, for waiters on one run.
    pub(crate) by_run: RunSignals,
    /// The outputs of completed runs, as their notifications carried them.
    pub(crate) outputs: HeardOutputs,
    /// Work notifications heard, and reconnections (a notification may have been missed).
    heard: AtomicU64,
    /// By workflow: how many notifications had been heard when a take found its queue empty,
    /// and when.
    empty: Mutex<HashMap<String, (u64, Instant)>>,
}

/// How long a take's finding that a queue is empty is trusted: due retries and expired leases
/// are announced by no one, so a busy worker looks again at least this often.
const EMPTY_FOR: Duration = Duration::from_millis(20);

impl Signals {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Signals {
            work: Notify::new(),
            runs: watch::channel(0).0,
            by_run: RunSignals::default(),
            outputs: HeardOutputs::default(),
            heard: AtomicU64::new(0),
            empty: Mutex::new(HashMap::new()),
        })
    }

    fn wake_all(&self) {
        self.heard.fetch_add(1, Ordering::SeqCst);
        self.work.notify_waiters();
        self.runs.send_modify(|v| *v = v.wrapping_add(1));
        self.by_run.changed_all();
    }

    fn heard_work(&self) {
        self.heard.fetch_add(1, Ordering::SeqCst);
        // One idle taker per notification: it wakes the next when it found a full batch.
        self.work.notify_one();
    }

    /// The work notifications heard so far: read before a take, for [`Signals::took`].
    pub(crate) fn epoch(&self) -> u64 {
        self.heard.load(Ordering::SeqCst)
    }

    /// Records what a take of `workflow` that began at `epoch` found: whether it came back
    /// short (the queue held nothing more that was due).
    pub(crate) fn took(&self, workflow: &str, epoch: u64, short: bool) {
        let Ok(mut empty) = self.empty.lock() else {
            return;
        };
        if short {
            empty.insert(workflow.to_owned(), (epoch, Instant::now()));
        } else {
            empty.remove(workflow);
        }
    }

    /// Whether `workflow`'s queue is known to be empty: a take found it so, recently, and no
    /// work was announced since.
    pub(crate) fn queue_empty(&self, workflow: &str) -> bool {
        self.empty_until(workflow).is_some()
    }

    /// Until when `workflow`'s queue is known to be empty (see [`Signals::queue_empty`]).
    pub(crate) fn empty_until(&self, workflow: &str) -> Option<Instant> {
        let empty = self.empty.lock().ok()?;
        let (epoch, at) = empty.get(workflow)?;
        let until = *at + EMPTY_FOR;
        (*epoch == self.epoch() && Instant::now() < until).then_some(until)
    }
}

/// The channels of a schema: work, and run changes.
pub(crate) fn channels(schema: &str) -> (String, String) {
    (format!("{schema}_work"), format!("{schema}_runs"))
}

/// Listens on the schema's channels until `signals` is dropped.
pub(crate) fn spawn(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    schema: &str,
    signals: &Arc<Signals>,
) {
    let (work, runs) = channels(schema);
    let weak = Arc::downgrade(signals);
    tokio::spawn(async move {
        let mut first = true;
        while weak.strong_count() > 0 {
            if let Err(error) = listen(&config, &tls, &work, &runs, &weak, &mut first).await {
                tracing::debug!(%error, "the PostgreSQL listener lost its connection; reconnecting");
            }
            if let Some(signals) = weak.upgrade() {
                signals.wake_all();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// One listening connection, until it fails or the signals are gone.
async fn listen(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    work: &str,
    runs: &str,
    weak: &Weak<Signals>,
    first: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven here: while `LISTEN` runs, then for the notifications (each
    // handled as it arrives, with no task in between).
    let statement = format!("LISTEN \"{work}\"; LISTEN \"{runs}\"");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            listening = &mut listen => {
                listening?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
    if !*first {
        // Whatever was notified while no one listened: look again.
        if let Some(signals) = weak.upgrade() {
            signals.wake_all();
        }
    }
    *first = false;
    // Now and then, whether anyone still listens.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = check.tick() => {
                if weak.strong_count() == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(signals) = weak.upgrade() else {
            return Ok(());
        };
        match message {
            Some(Ok(AsyncMessage::Notification(n))) if n.channel() == work => {
                signals.heard_work();
            }
            Some(Ok(AsyncMessage::Notification(n))) => {
                // `<run id>\t<output>` (a run that completed with a short output), `<run id>`,
                // or nothing (an id too long to send: any run).
                let (id, output) = match n.payload().split_once('\t') {
                    Some((id, output)) => (id, Some(output)),
                    None => (n.payload(), None),
                };
                match HeardOutputs::run_of_line(id).filter(|_| !id.is_empty()) {
                    Some(run) => {
                        if let Some(output) = output {
                            signals.outputs.insert(&run, output.as_bytes().to_vec());
                        }
                        signals.by_run.changed(&run);
                    }
                    None => signals.by_run.changed_all(),
                }
                signals.runs.send_modify(|v| *v = v.wrapping_add(1));
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_known_empty_only_until_work_is_announced_or_the_finding_ages() {
        let signals = Signals::new();
        assert!(!signals.queue_empty("Flow"), "nothing known at first");
        let epoch = signals.epoch();
        let before = Instant::now();
        signals.took("Flow", epoch, true);
        assert!(signals.queue_empty("Flow"));
        assert!(!signals.queue_empty("Other"), "known per workflow");
        let until = signals.empty_until("Flow").expect("known empty");
        assert!(until > Instant::now() && until <= before + EMPTY_FOR + Duration::from_millis(5));

        signals.heard_work();
        assert!(!signals.queue_empty("Flow"), "work was announced since");
        assert_eq!(signals.empty_until("Flow"), None);

        // A take that began before an announcement proves nothing about what it announced.
        signals.took("Flow", epoch, true);
        assert!(!signals.queue_empty("Flow"));

        signals.took("Flow", signals.epoch(), true);
        assert!(signals.queue_empty("Flow"));
        signals.took("Flow", signals.epoch(), false);
        assert!(!signals.queue_empty("Flow"), "a full take forgets it");

        signals.took("Flow", signals.epoch(), true);
        std::thread::sleep(EMPTY_FOR + Duration::from_millis(5));
        assert!(!signals.queue_empty("Flow"), "the finding ages out");

        signals.took("Flow", signals.epoch(), true);
        signals.wake_all();
        assert!(
            !signals.queue_empty("Flow"),
            "a reconnection may have missed announcements"
        );
    }
}
