//! Redis backend for Floxide's distributed runtime.
//!
//! Any number of worker processes on any number of machines share one Redis:
//!
//! ```no_run
//! # async fn demo() -> Result<(), floxide_core::FloxideError> {
//! use floxide_redis::{RedisBackend, RedisClient, RedisConfig};
//! let backend = RedisBackend::new(
//!     RedisClient::new(RedisConfig::new("redis://127.0.0.1:6379/").with_key_prefix("orders:")).await?,
//! );
//! // MyFlow::default().worker(backend.clone()).build()?; MyFlow::default().orchestrator(backend).build()?;
//! # let _ = backend; Ok(()) }
//! ```
//!
//! # Guarantees
//! Every state transition is one Lua script (in `lua/`, one file each, with the keys and
//! arguments it takes in its header), so it is atomic on the server:
//! - **take** leases the next ready item (after handing expired leases back to the queue and
//!   making due retries ready) and returns it with the run's context: one round trip;
//! - **commit** applies a step's effects — context (with a version check), successors
//!   (deduplicated by their derived ids), the item's completion, outputs, errors, metrics and
//!   the run's completion — only while the step's lease token is current: one round trip;
//! - **fail** schedules a retry as a delayed item or dead-letters the item;
//! - **heartbeat**, **release**, **control** (cancel, pause, resume), **start_run** (with its
//!   idempotency key) and **dead_letter** (requeue, drop).
//!
//! An idle worker blocks on a wake-up list (`BLPOP`) instead of polling; status changes reach
//! waiters through pub/sub. Times (leases, retries) are the server's clock (`TIME`), so
//! workers' clocks do not matter. What Redis itself promises bounds what Floxide can: with
//! `appendonly yes` and `appendfsync everysec` a crash of Redis loses at most about a second
//! of writes; without persistence a restart loses everything.
//!
//! # Key layout
//! Runs are spread over partitions (default 1) by a hash of their id. All keys of a partition
//! start with `<prefix>{p<N>}:` — the hash tag `{p<N>}` puts them in one Redis Cluster slot,
//! so every script touches keys of one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `run:<run>` | hash | status, workflow, times, first output, error, outstanding items, context version, metrics (`m_*`), node timings (`n:<node>`: count, total and max µs) |
//! | `ctx:<run>` | string | the serialized context |
//! | `it:<run>` | hash | per item `<id>` (bytes), `<id>:n` node, `:s` state, `:a` attempt, `:d` deliveries, `:l` lease token, `:w` worker |
//! | `outs:<run>`, `errs:<run>` | list | terminal outputs; failure records |
//! | `ready:<workflow>` | list | ready items (`<item id>:<run>`) |
//! | `wake:<workflow>` | list | wake-up tokens for blocked workers (trimmed to 64) |
//! | `leases` | sorted set | leased items by expiry |
//! | `delayed` | sorted set | retries by due time |
//! | `runs`, `done` | sorted set | runs by start time; finished runs by finish time |
//! | `dlq` | hash | dead letters by item |
//! | `idem:<key>` | string | the run an idempotency key started |
//! | `token` | string | the lease token counter |
//! | `reclaimed` | string | expired leases handed back so far |
//! | `events` | channel | run status changes |
//!
//! `<prefix>workers` (a hash of worker health reports) is outside the partitions. Finished
//! runs' keys expire after the retention (default 24 h) and leave the indexes, so nothing
//! grows without bound.

#![warn(missing_docs)]

mod backend;
mod client;
mod config;
mod keys;
mod reply;
mod scripts;
mod stats;
mod stores;
pub mod testing;

pub use backend::RedisBackend;
pub use client::{RedisBackendError, RedisClient, RedisClientError};
pub use config::RedisConfig;
pub use stats::{RunProgress, Stats, WorkflowCounts};
pub use stores::{
    RedisContextStore, RedisErrorStore, RedisLivenessStore, RedisMetricsStore, RedisRunInfoStore,
    RedisWorkItemStateStore, RedisWorkQueue,
};
