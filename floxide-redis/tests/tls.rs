//! `rediss://`: the backend talks TLS to a server that only serves TLS.

use std::time::Duration;

use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions, TlsFiles};
use floxide_redis::{RedisBackend, RedisBackendError, RedisClient, RedisConfig};

node! {
    pub struct Twice {};
    input = u64;
    output = u64;
    |_ctx, n| { Ok(Transition::Next(n * 2)) }
}

workflow! {
    pub struct Doubling { a: Twice, b: Twice }
    start = a;
    edges { a => [b]; b => []; }
}

/// A self-signed certificate for localhost/127.0.0.1, written next to a TLS-only server.
fn tls_server() -> (RedisServer, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("floxide-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let pem = certified.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = RedisServer::start_or_panic(ServerOptions {
        tls: Some(TlsFiles { cert, key }),
        ..ServerOptions::default()
    });
    // The server has read its certificate and key.
    let _ = std::fs::remove_dir_all(&dir);
    (server, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_over_tls_with_a_private_ca() {
    let (server, ca) = tls_server();
    assert!(server.url().starts_with("rediss://"));
    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("tls:")
            .with_tls_root_certificate(ca.into_bytes()),
    )
    .await
    .expect("TLS connection with the test CA");
    let backend = RedisBackend::new(client);
    let wf = Doubling {
        a: Twice {},
        b: Twice {},
    };
    let orchestrator = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend).build().unwrap(), 2);
    pool.start();
    let run = orchestrator
        .start_run(&WorkflowCtx::new(()), 5)
        .await
        .unwrap();
    assert_eq!(
        orchestrator
            .wait_for_output(&run, Duration::from_secs(10))
            .await
            .unwrap(),
        20
    );
    pool.try_stop().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_plain_text_is_not_tls() {
    let (server, _ca) = tls_server();
    // Without the CA, the self-signed certificate is not trusted.
    let refused = RedisClient::new(
        RedisConfig::new(server.url()).with_connect_timeout(Duration::from_secs(1)),
    )
    .await;
    assert!(
        matches!(refused, Err(RedisBackendError::Connect { .. })),
        "{refused:?}"
    );
    // A plain-text client cannot talk to a TLS-only server either.
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let refused =
        RedisClient::new(RedisConfig::new(plain).with_connect_timeout(Duration::from_secs(1)))
            .await;
    assert!(
        matches!(refused, Err(RedisBackendError::Connect { .. })),
        "{refused:?}"
    );
}
