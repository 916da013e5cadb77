//! The store types of the Redis backend: views of one [`RedisBackend`], for the per-store
//! builder setters of Floxide 3.x. Stores built from clients of the same server and key
//! prefix assemble into one backend.

use std::sync::Arc;

use floxide_core::distributed::{
    ContextStore, ErrorStore, LivenessStore, MetricsStore, RunInfoStore, StoreParts,
    WorkItemStateStore, WorkQueue,
};

use crate::{RedisBackend, RedisClient};

macro_rules! redis_store {
    ($(#[$doc:meta])* $name:ident, $trait:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            backend: RedisBackend,
        }

        impl $name {
            /// The store of `client`'s deployment.
            pub fn new(client: RedisClient) -> Self {
                $name {
                    backend: RedisBackend::new(client),
                }
            }
        }

        impl $trait for $name {
            fn attach(&self, parts: &mut StoreParts) {
                let config = self.backend.client().config();
                let identity = format!("redis {} {}", config.url(), config.key_prefix());
                parts.add_view($kind, identity, Arc::new(self.backend.clone()));
            }
        }
    };
}

redis_store!(
    /// The queue part on Redis.
    RedisWorkQueue, WorkQueue, "queue"
);
redis_store!(
    /// The context part on Redis.
    RedisContextStore, ContextStore, "context_store"
);
redis_store!(
    /// The run-info part on Redis.
    RedisRunInfoStore, RunInfoStore, "run_info_store"
);
redis_store!(
    /// The metrics part on Redis.
    RedisMetricsStore, MetricsStore, "metrics_store"
);
redis_store!(
    /// The error part on Redis.
    RedisErrorStore, ErrorStore, "error_store"
);
redis_store!(
    /// The liveness part on Redis.
    RedisLivenessStore, LivenessStore, "liveness_store"
);
redis_store!(
    /// The work-item state part on Redis.
    RedisWorkItemStateStore, WorkItemStateStore, "work_item_state_store"
);
