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
//!   (deduplicated by their derived ids), the item's completion, outputs, errors, counters and
//!   the run's completion — only while the step's lease token is current, and takes the
//!   worker's next item: one round trip per step (the only new successor of a step goes
//!   straight to its worker);
//! - **fail** schedules a retry (a timer) or dead-letters the item;
//! - **heartbeat**, **release**, **control** (cancel, pause, resume), **start_run** (with its
//!   idempotency key) and **dead_letter** (requeue, drop).
//!
//! Every script does bounded work, whatever the size of a run or a queue: a cancel or pause
//! changes the run's record only (the run's queued items are dropped or parked when a take
//! meets them), a resume queues a marker that moves parked items back a few hundred at a
//! time, and timers, index pruning and dead-letter expiry are handled in small slices.
//!
//! Every write carries a request id: when a connection drops after a request was sent, the
//! client sends it again, and a script that already applied it answers as it did the first
//! time (a start finds its run, a commit its commit and the item it took next, a cancel its
//! cancel). Commands are retried within a window (default 5 s, `with_retry_window`), and a
//! connection that stops answering is rebuilt.
//!
//! An idle worker blocks on a wake-up list (`BLPOP`) instead of polling; status changes reach
//! waiters through pub/sub (a dropped subscription wakes every waiter once it is back).
//!
//! # Redis Cluster
//! `RedisConfig::cluster([...seed URLs])` (or a `redis+cluster://h1:p1,h2:p2/` URL) runs the
//! same scripts on a Redis Cluster (Redis 7 or later), through the `redis` crate's cluster
//! client: runs spread over 48 partitions by default ([`CLUSTER_PARTITIONS`]), whose hash
//! tags fall evenly over the slots; every script call declares a never-written key of its
//! partition, so that a cluster refuses it (`TRYAGAIN`, resent) while the partition's slot
//! migrates; events and wake-ups go over sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), and idle
//! workers wait for them instead of blocking on a list per partition. Times
//! (leases, retries) are the server's clock (`TIME`), so workers' clocks do not matter. What
//! Redis itself promises bounds what Floxide can: with `appendonly yes` and
//! `appendfsync everysec` a crash of Redis loses at most about a second of writes (a run whose
//! start was acknowledged can be lost with them; `appendfsync always` closes that window at a
//! cost in throughput); without persistence a restart loses everything.
//!
//! # Key layout
//! Runs are spread over partitions (default 1; 48 on a cluster) by a hash of their id (a run started with an
//! idempotency key lives in its key's partition). The partition count is recorded under
//! `<prefix>meta`; a client configured with another count is refused. All keys of a partition
//! start with `<prefix>{p<N>}:` (on a cluster `{p<N>.<s>}`, with `s` chosen to place the
//! partition in its share of the slots) — the hash tag puts them in one Redis Cluster slot,
//! so every script touches keys of one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `r:<run>` | hash | the run's record: status, workflow, times, context (`ctx`) and its version, first output, error, outstanding and parked item counts, counters (`m_*`), node timings (`nt`, whose counts are the steps done), the request ids that started, controlled and finished it; a new run's record leaves out the counters at their starting values (outstanding `left` 1, context version `ver` 0, items made `m_items` 1) |
//! | `i:<run>` | hash | per item: `<id>` its bytes (emptied once committed), `<id>:m` its state (`<state> <attempt> <deliveries> <token> <node> <request>`), `<id>:w` its worker |
//! | `pk:<run>` | list | ready items of a paused or failed run, parked until a resume |
//! | `outs:<run>`, `errs:<run>` | list | terminal outputs after the first; failure records |
//! | `rdl:<run>` | set | the run's dead-lettered items |
//! | `q:<workflow>` | list | ready items (`<item id>:<run>`) and resume markers (`@<run>`) |
//! | `wake:<workflow>` | list | wake-up tokens for blocked workers (at most 64) |
//! | `tm` | sorted set | timers: leases (`L<entry>`) by expiry, retries (`R<entry>`) by due time |
//! | `sh:<run>` | list | the run's step history, a line per lease transition (a completed run's routine one goes with its items) |
//! | `runs` | sorted set | runs by start time |
//! | `fin` | list | finished runs (`<finish ms> <run>`), oldest first, for the pruning of `runs` |
//! | `dlh`, `dlq` | hash, sorted set | dead letters (JSON, and the item's bytes under `<entry>:p`); by time |
//! | `idem:<key>` | string | the run an idempotency key started |
//! | `wt:<worker>`, `wc:<worker>` | string | what a worker's last take or commit leased from the queue, with the tokens (for a retried request; 2 minutes; a successor handed straight to the committing worker names the commit's request in its state instead) |
//! | `reclaimed` | string | expired leases handed back so far |
//! | `ev` | channel | run status changes (one message per script, a run id per line; sharded on a cluster) |
//! | `wk` | channel | on a cluster: a workflow with new ready work (sharded), for idle workers |
//! | `guard` | none | never written; declared by every script call (see above) |
//!
//! `<prefix>meta` (the partition count), `<prefix>workers` (worker health reports) and
//! `<prefix>graphs` (the workflows' registered graphs) are outside the partitions. A finished run keeps its record (with its context), outputs and
//! errors for the retention (default 24 h); the items of a completed or cancelled run go when
//! it finishes, those of a failed run (which a resume may need) with its other keys. Dead
//! letters carry their item's bytes and expire after their own retention (default 7 days).
//! So nothing grows without bound.

#![warn(missing_docs)]

mod backend;
mod client;
mod config;
mod connection;
mod graphs;
mod history;
mod keys;
mod pages;
mod reply;
mod scripts;
mod stats;
mod stores;
pub mod testing;
mod worker;

pub use backend::RedisBackend;
pub use client::{RedisBackendError, RedisClient, RedisClientError};
pub use config::{RedisConfig, CLUSTER_PARTITIONS};
pub use connection::RedisConnection;
pub use stats::{RunProgress, Stats, WorkflowCounts};
pub use stores::{
    RedisContextStore, RedisErrorStore, RedisLivenessStore, RedisMetricsStore, RedisRunInfoStore,
    RedisWorkItemStateStore, RedisWorkQueue,
};
