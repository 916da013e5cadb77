//! Connecting and migrating against a private PostgreSQL server started by the test.

use std::time::{Duration, Instant};

use floxide_postgres::testing::PostgresServer;
use floxide_postgres::{PostgresBackend, PostgresBackendError, PostgresConfig, SCHEMA_VERSION};

/// A direct client of the test server (to look at what the backend did).
async fn admin(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("the test server accepts connections");
    tokio::spawn(connection);
    client
}

async fn tables_in(client: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn migrations_in(client: &tokio_postgres::Client, schema: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.floxide_migrations"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_migrates_once_and_again_is_a_no_op() {
    let server = PostgresServer::start_or_panic();
    let backend = PostgresBackend::connect(server.url()).await.unwrap();
    assert_eq!(backend.schema_version().await.unwrap(), SCHEMA_VERSION);
    let db = admin(&server).await;
    let tables = tables_in(&db, "floxide").await;
    for table in [
        "runs",
        "items",
        "outputs",
        "errors",
        "dead_letters",
        "workers",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    // A second process connecting finds the schema up to date.
    let again = PostgresBackend::connect(server.url()).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(
        migrations_in(&db, "floxide").await,
        i64::from(SCHEMA_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let server = PostgresServer::start_or_panic();
    let url = server.url();
    let starts = (0..8).map(|_| {
        let config = PostgresConfig::new(url.clone()).with_schema("race");
        tokio::spawn(PostgresBackend::connect_with(config))
    });
    for start in futures_util::future::join_all(starts).await {
        let backend = start.unwrap().expect("every concurrent start connects");
        assert_eq!(backend.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
    let db = admin(&server).await;
    assert_eq!(migrations_in(&db, "race").await, i64::from(SCHEMA_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_schema_is_a_deployment_of_its_own() {
    let server = PostgresServer::start_or_panic();
    let flows =
        PostgresBackend::connect_with(PostgresConfig::new(server.url()).with_schema("flows"))
            .await
            .unwrap();
    assert_eq!(flows.config().schema(), "flows");
    let db = admin(&server).await;
    assert!(tables_in(&db, "flows").await.iter().any(|t| t == "items"));
    assert!(
        tables_in(&db, "floxide").await.is_empty(),
        "nothing outside the configured schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_this_release_is_refused() {
    let server = PostgresServer::start_or_panic();
    PostgresBackend::connect(server.url()).await.unwrap();
    let db = admin(&server).await;
    db.execute(
        "INSERT INTO floxide.floxide_migrations (version, name) VALUES ($1, 'future')",
        &[&(SCHEMA_VERSION + 1)],
    )
    .await
    .unwrap();
    let error = PostgresBackend::connect(server.url()).await.unwrap_err();
    match &error {
        PostgresBackendError::SchemaTooNew { found, known, .. } => {
            assert_eq!((*found, *known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other}"),
    }
    assert!(error.to_string().contains("upgrade"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_and_refused_users_are_clear_errors() {
    let server = PostgresServer::start_or_panic();
    // Nothing listens on the port of a listener just closed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let error = PostgresBackend::connect_with(
        PostgresConfig::new(format!("postgres://u:hunter2@127.0.0.1:{port}/x"))
            .with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, PostgresBackendError::Connect { .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let url = format!("postgres://nobody@127.0.0.1:{}/postgres", server.port());
    let error = PostgresBackend::connect(url).await.unwrap_err();
    assert!(
        matches!(error, PostgresBackendError::Connect { .. })
            && error.to_string().contains("nobody"),
        "the server's refusal names the role: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_reconnects_after_a_server_restart() {
    let mut server = PostgresServer::start_or_panic();
    let backend = PostgresBackend::connect(server.url()).await.unwrap();
    assert_eq!(backend.schema_version().await.unwrap(), SCHEMA_VERSION);
    server.stop_immediately().unwrap();
    assert!(
        backend.schema_version().await.is_err(),
        "the server is down"
    );
    server.start_again().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match backend.schema_version().await {
            Ok(version) => {
                assert_eq!(version, SCHEMA_VERSION);
                break;
            }
            // The pool hands out and then drops the connections the restart broke.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no connection after the restart: {e}"),
        }
    }
}

mod by_url {
    use floxide::*;

    node! {
        /// `n -> n * 2`.
        pub struct Double {};
        input = u32;
        output = u32;
        |_ctx, n| { Ok(Transition::Next(n * 2)) }
    }

    workflow! {
        pub struct Twice { double: Double }
        start = double;
        edges { double => []; }
    }

    /// The worker runner's `--backend postgres://…` reaches this backend through
    /// `floxide::connect_backend`, and the shared backend it returns runs workflows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_backend_picks_postgres_by_the_url_scheme() {
        let server = floxide_postgres::testing::PostgresServer::start_or_panic();
        let backend = floxide::connect_backend(&server.url()).await.unwrap();
        let wf = Twice { double: Double {} };
        let orchestrator = wf.orchestrator(backend.clone()).build().unwrap();
        let mut pool = WorkerPool::new(wf.worker(backend).build().unwrap(), 1);
        pool.start();
        let run = orchestrator
            .start_run(&WorkflowCtx::new(()), 21)
            .await
            .unwrap();
        let out = orchestrator
            .wait_for_output(&run, std::time::Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out, 42);
        pool.try_stop().await.unwrap();
        let wrong = floxide::connect_backend("mysql://db/app")
            .await
            .err()
            .unwrap();
        assert!(
            wrong
                .to_string()
                .contains("no backend for URL scheme `mysql`"),
            "{wrong}"
        );
    }
}
