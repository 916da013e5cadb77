//! Wake-ups through `LISTEN/NOTIFY`: one listening connection per backend value; idle takers
//! and run waiters block on what it hears instead of polling.
//!
//! Writers notify inside their transaction (`pg_notify`), so a notification is delivered at
//! commit, once per transaction and channel. After the listening connection is lost, it
//! reconnects and wakes everyone (a notification may have been missed meanwhile).

use std::sync::{Arc, Weak};
use std::time::Duration;

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
}

impl Signals {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Signals {
            work: Notify::new(),
            runs: watch::channel(0).0,
        })
    }

    fn wake_all(&self) {
        self.work.notify_waiters();
        self.runs.send_modify(|v| *v = v.wrapping_add(1));
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.channel().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN \"{work}\"; LISTEN \"{runs}\""))
        .await?;
    if !*first {
        // Whatever was notified while no one listened: look again.
        if let Some(signals) = weak.upgrade() {
            signals.wake_all();
        }
    }
    *first = false;
    loop {
        let heard = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        let Some(signals) = weak.upgrade() else {
            driver.abort();
            return Ok(());
        };
        match heard {
            // One idle taker per notification: it wakes the next when it found a full batch.
            Ok(Some(channel)) if channel == work => signals.work.notify_one(),
            Ok(Some(_)) => signals.runs.send_modify(|v| *v = v.wrapping_add(1)),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
