//! The conformance suite (G1–G7) on the in-memory backend, with tokio's paused clock driving
//! lease expiry and retry delays.

use floxide::InMemoryBackend;

floxide::conformance_tests!(#[tokio::test(start_paused = true)], async { InMemoryBackend::new() });

/// The same checks on a multi-threaded runtime in real time: steps of one run truly execute
/// in parallel, so context merges and join conflicts happen for real.
mod multi_thread {
    use floxide::InMemoryBackend;

    floxide::conformance_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)],
        async { InMemoryBackend::new() }
    );
}
