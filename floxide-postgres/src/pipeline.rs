//! A transaction whose `BEGIN` travels with its first statements and whose `COMMIT` travels
//! with its last ones, pipelined on one pooled connection: a batch commit costs two round
//! trips (lock and read; write, take and commit).

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{ClientWrapper, Object};

use crate::ops::backend;
use floxide_core::distributed::DistributedError;

/// A pooled connection inside a transaction that this value ends. Dropped before its `COMMIT`
/// was answered (an error, a cancelled future), the connection is closed instead of going
/// back to the pool, so the server rolls the transaction back and no later user of the pool
/// finds it open.
pub(crate) struct Pipelined {
    client: Option<Object>,
    open: AtomicBool,
}

impl Pipelined {
    /// The transaction on `client` (not begun yet: see [`Pipelined::begin`]).
    pub(crate) fn new(client: Object) -> Self {
        Pipelined {
            client: Some(client),
            open: AtomicBool::new(false),
        }
    }

    /// The connection, for the statements of the transaction.
    pub(crate) fn client(&self) -> &ClientWrapper {
        match &self.client {
            Some(client) => client,
            None => unreachable!("the connection is only taken when the transaction is dropped"),
        }
    }

    /// `BEGIN`: poll it before (or together with, first) the transaction's first statements.
    pub(crate) async fn begin(&self) -> Result<(), DistributedError> {
        self.open.store(true, Ordering::Relaxed);
        self.client().batch_execute("BEGIN").await.map_err(backend)
    }

    /// `BEGIN` of a transaction whose `COMMIT` does not wait for its WAL flush: only for
    /// writes a server crash may undo without losing anything acknowledged (leases).
    pub(crate) async fn begin_unflushed(&self) -> Result<(), DistributedError> {
        self.open.store(true, Ordering::Relaxed);
        self.client()
            .batch_execute("BEGIN; SET LOCAL synchronous_commit TO off")
            .await
            .map_err(backend)
    }

    /// `COMMIT`: polled after (or together with, last) the transaction's last statements.
    /// Once it is answered the connection goes back to the pool with this value.
    pub(crate) async fn commit(&self) -> Result<(), DistributedError> {
        self.client()
            .batch_execute("COMMIT")
            .await
            .map_err(backend)?;
        self.open.store(false, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if *self.open.get_mut() {
            if let Some(client) = self.client.take() {
                // Out of the pool, then dropped: the connection closes.
                drop(Object::take(client));
            }
        }
    }
}
