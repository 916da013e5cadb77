//! Floxide: workflows in Rust that run in-process or across many workers.
//!
//! Declare nodes with [`node!`] (or by implementing [`Node`]), wire them with [`workflow!`],
//! whose graph is checked at compile time, and run the workflow:
//!
//! ```
//! use floxide::*;
//!
//! node! {
//!     pub struct AddOne {};
//!     context = ();
//!     input = u64;
//!     output = u64;
//!     |_ctx, n| { Ok(Transition::Next(n + 1)) }
//! }
//!
//! workflow! {
//!     pub struct Count { a: AddOne, b: AddOne }
//!     start = a;
//!     edges { a => [b]; b => []; }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), FloxideError> {
//! let wf = Count { a: AddOne {}, b: AddOne {} };
//! assert_eq!(wf.run(&WorkflowCtx::new(()), 1).await?, 3);
//! # Ok(())
//! # }
//! ```

extern crate self as floxide;

pub use floxide_core::distributed::*;
pub use floxide_core::*;
pub use floxide_macros::{node, workflow, Merge};

pub mod conformance;

/// The Redis backend (the `floxide-redis` crate), with feature `redis`.
#[cfg(feature = "redis")]
pub use floxide_redis as redis;

/// The PostgreSQL backend (the `floxide-postgres` crate), with feature `postgres`.
#[cfg(feature = "postgres")]
pub use floxide_postgres as postgres;

mod connect;
pub use connect::connect_backend;

#[doc(hidden)]
pub mod __private {
    pub use floxide_core::private::*;
}
