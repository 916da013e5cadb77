//! The store types of Floxide 3.x on Redis: typed views of one [`RedisBackend`].
//!
//! Each implements its 3.x store trait (reads work; writes that would bypass the engine's steps
//! return `Unsupported`), and stores whose clients name the same server and key prefix
//! assemble into one backend in the builders.

use std::marker::PhantomData;
use std::sync::Arc;

use floxide_core::distributed::{kind, StoreBinding, StoreView};

use crate::{RedisBackend, RedisClient};

/// What identifies the deployment a client talks to: stores with one identity share a backend.
fn binding(backend: &RedisBackend) -> StoreBinding {
    let config = backend.client().config();
    StoreBinding::Backend {
        identity: format!("redis {} {}", config.url(), config.key_prefix()),
        backend: Arc::new(backend.clone()),
    }
}

/// Generates a Redis view type: `Name<T>` typed by `T` (work item or context), or `Name`.
macro_rules! redis_view {
    ($(#[$doc:meta])* $name:ident<$t:ident>, $kind:ty) => {
        $(#[$doc])*
        pub struct $name<$t> {
            backend: RedisBackend,
            _value: PhantomData<fn() -> $t>,
        }

        impl<$t> $name<$t> {
            /// The store of `client`'s deployment.
            pub fn new(client: RedisClient) -> Self {
                $name { backend: RedisBackend::new(client), _value: PhantomData }
            }
        }

        impl<$t> Clone for $name<$t> {
            fn clone(&self) -> Self {
                $name { backend: self.backend.clone(), _value: PhantomData }
            }
        }

        impl<$t> std::fmt::Debug for $name<$t> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("backend", &self.backend).finish()
            }
        }

        impl<$t: 'static> StoreView<$kind> for $name<$t> {
            type Value = $t;
            fn binding(&self) -> StoreBinding {
                binding(&self.backend)
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $kind:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            backend: RedisBackend,
        }

        impl $name {
            /// The store of `client`'s deployment.
            pub fn new(client: RedisClient) -> Self {
                $name { backend: RedisBackend::new(client) }
            }
        }

        impl StoreView<$kind> for $name {
            type Value = ();
            fn binding(&self) -> StoreBinding {
                binding(&self.backend)
            }
        }
    };
}

redis_view!(
    /// The work queue on Redis, typed by the workflow's work item.
    RedisWorkQueue<WI>, kind::Queue
);
redis_view!(
    /// The run contexts on Redis, typed by the context.
    RedisContextStore<C>, kind::Contexts
);
redis_view!(
    /// The work-item states on Redis, typed by the workflow's work item.
    RedisWorkItemStateStore<W>, kind::Items
);
redis_view!(
    /// The run records on Redis.
    RedisRunInfoStore, kind::Runs
);
redis_view!(
    /// The run counters on Redis.
    RedisMetricsStore, kind::Metrics
);
redis_view!(
    /// The failure records on Redis.
    RedisErrorStore, kind::Errors
);
redis_view!(
    /// The worker reports on Redis.
    RedisLivenessStore, kind::Liveness
);
