//! What the tests that drive runs of a workflow `Flow` by hand (backend calls, no workflow
//! code) share.

use std::time::Duration;

use floxide::distributed::*;
use floxide_redis::RedisBackend;

/// Take options: a long lease, five deliveries.
pub fn options() -> TakeOptions {
    TakeOptions {
        lease_timeout: Duration::from_secs(30),
        max_deliveries: 5,
    }
}

/// Takes a ready item of `Flow` for `worker`, asking for up to `max` and checking that one
/// came.
pub async fn take_one(backend: &RedisBackend, worker: &WorkerId, max: usize) -> Taken {
    let mut taken = backend
        .take_batch(
            TakeRequest::new("Flow", worker, options()).with_max(max),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    taken.remove(0)
}
