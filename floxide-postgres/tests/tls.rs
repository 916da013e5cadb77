//! TLS: a server that accepts TLS connections only, with a self-signed certificate. The
//! backend connects (pool, listener, migrations) when given that certificate as its root;
//! without it, `sslmode=require` fails verification, and a plain connection is refused.

use std::time::Duration;

use floxide::*;
use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresConfig};

node! {
    /// `n -> n + 1`.
    pub struct Inc {};
    input = u32;
    output = u32;
    |_ctx, n| { Ok(Transition::Next(n + 1)) }
}

workflow! {
    pub struct Two { a: Inc, b: Inc }
    start = a;
    edges { a => [b]; b => []; }
}

/// A TLS-only server and the PEM of its self-signed certificate (for 127.0.0.1, localhost).
fn tls_server() -> (PostgresServer, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
    let mut server = PostgresServer::start_or_panic();
    let pem = certified.cert.pem();
    server
        .require_tls(&pem, &certified.signing_key.serialize_pem())
        .expect("restart the server with TLS");
    (server, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_over_tls_with_a_private_root() {
    let (server, pem) = tls_server();
    let config = PostgresConfig::new(server.url())
        .with_schema("secure")
        .with_tls_root_certificate(pem);
    let backend = PostgresBackend::connect_with(config).await.unwrap();
    let wf = Two {
        a: Inc {},
        b: Inc {},
    };
    let o = wf.orchestrator(backend.clone()).build().unwrap();
    let mut pool = WorkerPool::new(wf.worker(backend).build().unwrap(), 1);
    pool.start();
    let run = o.start_run(&WorkflowCtx::new(()), 40).await.unwrap();
    // The completion arrives through the listener's notification (also over TLS).
    let out = o
        .wait_for_output(&run, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out, 42);
    pool.try_stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_and_plain_connections_are_refused() {
    let (server, _) = tls_server();
    // TLS asked for, but the certificate is not in the OS's roots: verification fails.
    let url = format!("{}?sslmode=require", server.url());
    let err = PostgresBackend::connect_with(
        PostgresConfig::new(url).with_connect_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
    // No TLS asked for: the server refuses a plain connection.
    let err = PostgresBackend::connect(server.url())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no pg_hba.conf entry") || err.contains("SSL off"),
        "{err}"
    );
    // A root that is no certificate is a configuration error.
    let err = PostgresBackend::connect_with(
        PostgresConfig::new(server.url()).with_tls_root_certificate("not a certificate"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("TLS root certificate"), "{err}");
}
