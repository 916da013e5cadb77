//! Connection settings of the Redis backend against private `redis-server`s: passwords (in the
//! config and in the URL), ACL users, wrong or missing credentials, connect timeouts, key
//! prefixes that keep deployments apart, and clearing a prefix.

use std::time::{Duration, Instant};

use floxide::*;
use floxide_redis::testing::{RedisServer, ServerOptions};
use floxide_redis::{RedisBackend, RedisBackendError, RedisClient, RedisConfig};

#[path = "support/chain.rs"]
mod chain;
use chain::chain;

/// Runs `Chain` from 1 on `client` with an in-process worker: the connection really works.
async fn runs_a_workflow(client: RedisClient) {
    let backend = RedisBackend::new(client);
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    let worker = chain()
        .worker(backend)
        .idle_sleep_duration(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut pool = WorkerPool::new(worker, 1).with_grace_period(Duration::from_millis(100));
    pool.start();
    let output = o.wait_for_output(&run, Duration::from_secs(20)).await;
    pool.try_stop().await.unwrap();
    assert_eq!(output.unwrap(), 3);
}

/// Expects a connect error; returns its text.
fn connect_error(result: Result<RedisClient, RedisBackendError>) -> String {
    match result {
        Err(e @ RedisBackendError::Connect { .. }) => e.to_string(),
        Err(other) => panic!("expected a connect error, got {other:?}"),
        Ok(client) => panic!("expected a connect error, got a client {client:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_in_config_or_url_works_and_a_wrong_one_is_a_clear_error() {
    let server = RedisServer::start_or_panic(ServerOptions {
        password: Some("s3cret-pw".to_owned()),
        ..ServerOptions::default()
    });
    let port = server.port();

    // In the config.
    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("cfg:")
            .with_password("s3cret-pw"),
    )
    .await
    .expect("the password in the config is used");
    runs_a_workflow(client).await;

    // In the URL.
    let client = RedisClient::new(
        RedisConfig::new(format!("redis://:s3cret-pw@127.0.0.1:{port}/")).with_key_prefix("url:"),
    )
    .await
    .expect("the password in the URL is used");
    runs_a_workflow(client).await;

    // The config's password overrides the URL's.
    let client = RedisClient::new(
        RedisConfig::new(format!("redis://:stale@127.0.0.1:{port}/"))
            .with_key_prefix("over:")
            .with_password("s3cret-pw"),
    )
    .await
    .expect("the config's password wins over the URL's");
    runs_a_workflow(client).await;

    // Wrong and missing passwords: a typed, readable error, quickly, without the password.
    let started = Instant::now();
    let wrong = connect_error(
        RedisClient::new(
            RedisConfig::new(format!("redis://:not-the-pw@127.0.0.1:{port}/"))
                .with_connect_timeout(Duration::from_secs(3)),
        )
        .await,
    );
    assert!(
        wrong.contains(&format!(
            "cannot connect to Redis at `redis://***@127.0.0.1:{port}/`"
        )),
        "{wrong}"
    );
    assert!(
        wrong.contains("WRONGPASS") || wrong.to_lowercase().contains("password"),
        "the error says the password is wrong: {wrong}"
    );
    assert!(
        !wrong.contains("not-the-pw"),
        "the password leaked: {wrong}"
    );
    let wrong_in_config = connect_error(
        RedisClient::new(RedisConfig::new(server.url()).with_password("not-the-pw")).await,
    );
    assert!(
        !wrong_in_config.contains("not-the-pw"),
        "the password leaked: {wrong_in_config}"
    );
    let missing = connect_error(RedisClient::new(RedisConfig::new(server.url())).await);
    assert!(
        missing.contains("NOAUTH") || missing.to_lowercase().contains("auth"),
        "the error says authentication is required: {missing}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused credentials are reported at once, not after retries: {:?}",
        started.elapsed()
    );
    eprintln!("config/password: wrong → {wrong}\nconfig/password: missing → {missing}");
}

/// A user not allowed to load functions (or a server before Redis 7) runs the same code as
/// scripts: everything works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_functions_runs_scripts() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let admin = ::redis::Client::open(server.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "old",
            "on",
            ">old-pw",
            "~*",
            "&*",
            "+@all",
            "-function",
            "-fcall",
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("old:")
            .with_username("old")
            .with_password("old-pw"),
    )
    .await
    .expect("a user without FUNCTION connects");
    runs_a_workflow(client).await;
    let libraries: Vec<::redis::Value> = ::redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(libraries.is_empty(), "no library was loaded: {libraries:?}");
    // With the default user, the library is loaded and used.
    let client = RedisClient::new(RedisConfig::new(server.url()).with_key_prefix("new:"))
        .await
        .unwrap();
    runs_a_workflow(client.clone()).await;
    let libraries: Vec<::redis::Value> = ::redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(libraries.len(), 1, "one library: {libraries:?}");
    // A server that lost the library (a restart without persistence) gets it again.
    ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    runs_a_workflow(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_can_connect() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let admin = ::redis::Client::open(server.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("ACL")
        .arg(&["SETUSER", "flow", "on", ">flow-pw", "~app:*", "&*", "+@all"])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // The default user no longer works without a password: only `flow` gets in.
    ::redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let client = RedisClient::new(
        RedisConfig::new(server.url())
            .with_key_prefix("app:")
            .with_username("flow")
            .with_password("flow-pw"),
    )
    .await
    .expect("the ACL user connects");
    runs_a_workflow(client).await;

    let url = format!("redis://flow:flow-pw@127.0.0.1:{}/", server.port());
    let client = RedisClient::new(RedisConfig::new(url).with_key_prefix("app:url:"))
        .await
        .expect("the ACL user in the URL connects");
    runs_a_workflow(client).await;

    let wrong = connect_error(
        RedisClient::new(
            RedisConfig::new(server.url())
                .with_key_prefix("app:")
                .with_username("flow")
                .with_password("nope"),
        )
        .await,
    );
    assert!(
        wrong.contains("WRONGPASS") || wrong.to_lowercase().contains("password"),
        "{wrong}"
    );
    // The user may only touch `app:*` keys: another prefix is refused with a clear error, at
    // connect time (the client records the deployment's partition count under its prefix).
    let denied = connect_error(
        RedisClient::new(
            RedisConfig::new(server.url())
                .with_key_prefix("other:")
                .with_username("flow")
                .with_password("flow-pw"),
        )
        .await,
    );
    assert!(
        denied.contains("NOPERM") || denied.contains("permission"),
        "{denied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_prefixes_do_not_see_each_other() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let connect = |prefix: &'static str| {
        let url = server.url();
        async move {
            RedisBackend::new(
                RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix))
                    .await
                    .unwrap(),
            )
        }
    };
    let blue = connect("blue:").await;
    let green = connect("green:").await;
    let blue_o = chain().orchestrator(blue.clone()).build().unwrap();
    let green_o = chain().orchestrator(green.clone()).build().unwrap();
    let blue_run = blue_o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();

    assert!(matches!(
        green_o.status(&blue_run).await,
        Err(FloxideError::Distributed(DistributedError::UnknownRun(_)))
    ));
    assert!(green_o.list_runs(None).await.unwrap().is_empty());
    // Green's worker does not take blue's work.
    let green_worker = chain().worker(green.clone()).build().unwrap();
    assert_eq!(green_worker.run_once("green-0").await.unwrap(), None);
    assert_eq!(
        blue_o.status(&blue_run).await.unwrap(),
        RunStatus::Pending,
        "blue's run was touched by green's worker"
    );
    // Blue's worker does, and blue's run completes; green still sees nothing.
    let blue_worker = chain().worker(blue.clone()).build().unwrap();
    assert_eq!(blue_worker.run_once("blue-0").await.unwrap(), None);
    assert_eq!(
        blue_worker.run_once("blue-0").await.unwrap(),
        Some((blue_run.clone(), 3))
    );
    let green_run = green_o.start_run(&WorkflowCtx::new(()), 10).await.unwrap();
    let listed: Vec<String> = green_o
        .list_runs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(listed, vec![green_run.clone()]);
    let blue_listed: Vec<String> = blue_o
        .list_runs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(blue_listed, vec![blue_run]);
    assert!(green_o.dead_letters().await.unwrap().is_empty());
    assert_eq!(green_worker.run_once("green-0").await.unwrap(), None);
    assert_eq!(
        green_worker.run_once("green-0").await.unwrap(),
        Some((green_run, 12))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_bounds_connecting() {
    // A port where nothing listens.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let refused = connect_error(
        RedisClient::new(
            RedisConfig::new(format!("redis://127.0.0.1:{port}/"))
                .with_connect_timeout(Duration::from_millis(500)),
        )
        .await,
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "connecting to a closed port took {took:?}"
    );
    assert!(
        refused.contains(&format!(
            "cannot connect to Redis at `redis://127.0.0.1:{port}/`"
        )),
        "{refused}"
    );
    assert!(refused.to_lowercase().contains("refused"), "{refused}");

    // A server that accepts connections but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let mute = connect_error(
        RedisClient::new(
            RedisConfig::new(format!("redis://127.0.0.1:{silent_port}/"))
                .with_connect_timeout(Duration::from_millis(500)),
        )
        .await,
    );
    let mute_took = started.elapsed();
    assert!(
        mute_took < Duration::from_secs(3),
        "connecting to a silent server took {mute_took:?}"
    );
    assert!(
        mute.contains("timed out") || mute.contains("no answer"),
        "{mute}"
    );
    drop(silent);
    eprintln!(
        "config/connect-timeout: closed port → {took:?}: {refused}\n\
         config/connect-timeout: silent server → {mute_took:?}: {mute}"
    );

    // Not a Redis URL at all.
    match RedisClient::new(RedisConfig::new("http://example.invalid/")).await {
        Err(RedisBackendError::InvalidUrl { .. }) => {}
        other => panic!("expected an invalid URL error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_only_its_prefixes_keys() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let mine = RedisClient::new(RedisConfig::new(server.url()).with_key_prefix("mine:"))
        .await
        .unwrap();
    let theirs = RedisClient::new(RedisConfig::new(server.url()).with_key_prefix("theirs:"))
        .await
        .unwrap();
    for client in [&mine, &theirs] {
        let backend = RedisBackend::new(client.clone());
        let o = chain().orchestrator(backend.clone()).build().unwrap();
        let worker = chain().worker(backend).build().unwrap();
        for n in 0..5 {
            o.start_run(&WorkflowCtx::new(()), n).await.unwrap();
        }
        worker.run_once("w").await.unwrap();
    }
    let conn = mine.connection();
    let count = |pattern: &'static str| {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len()
        }
    };
    let (mine_before, theirs_before) = (count("mine:*").await, count("theirs:*").await);
    assert!(mine_before > 10, "{mine_before}");
    assert!(theirs_before > 10, "{theirs_before}");
    // Enough keys for several SCAN rounds.
    let mut pipe = ::redis::pipe();
    for i in 0..2500 {
        pipe.set(format!("mine:filler:{i}"), i).ignore();
    }
    pipe.query_async::<()>(&mut conn.clone()).await.unwrap();

    mine.clear().await.unwrap();
    assert_eq!(count("mine:*").await, 0, "clear left keys of its prefix");
    assert_eq!(
        count("theirs:*").await,
        theirs_before,
        "clear touched another prefix"
    );
    let o = chain()
        .orchestrator(RedisBackend::new(mine.clone()))
        .build()
        .unwrap();
    assert!(o.list_runs(None).await.unwrap().is_empty());
    // The cleared deployment is usable again.
    runs_a_workflow(mine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_scheme_means_redis_as_in_3x() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let bare = format!("127.0.0.1:{}", server.port());
    let client = RedisClient::new(RedisConfig::new(bare).with_key_prefix("bare:"))
        .await
        .expect("host:port is a redis:// URL");
    runs_a_workflow(client).await;
}

/// The kinds of `run`'s step history on `backend`.
async fn history_kinds(backend: &RedisBackend, run: &str) -> Vec<&'static str> {
    let history = backend.step_history(run).await.unwrap().unwrap();
    history.iter().map(|e| e.kind.name()).collect()
}

/// A private `redis-server` and a backend on it whose keys are under `prefix` (default step
/// history settings).
async fn history_backend(prefix: &str) -> (RedisServer, RedisBackend) {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let config = RedisConfig::new(server.url()).with_key_prefix(prefix);
    let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
    (server, backend)
}

/// A plain connection to `server`, to look at its keys.
async fn connection(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Starts a run of `Chain` from 1 and takes its first step for worker `w`.
async fn started_and_taken(backend: &RedisBackend) -> (String, Taken) {
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    let taken = backend
        .take(
            "Chain",
            &WorkerId::from("w"),
            TakeOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .expect("the first step is ready");
    (run, taken)
}

/// Runs `Chain` from 1 to its end with one worker.
async fn run_chain(backend: &RedisBackend) -> String {
    let o = chain().orchestrator(backend.clone()).build().unwrap();
    let run = o.start_run(&WorkflowCtx::new(()), 1).await.unwrap();
    let worker = chain().worker(backend.clone()).build().unwrap();
    while worker.run_once("w").await.unwrap().is_none() {}
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_history_can_be_turned_off() {
    let server = RedisServer::start_or_panic(ServerOptions::default());
    let mut histories = Vec::new();
    for on in [true, false] {
        let config = RedisConfig::new(server.url())
            .with_key_prefix(format!("history-{on}:"))
            .with_step_history(on)
            .with_routine_step_history(true);
        let backend = RedisBackend::new(RedisClient::new(config).await.unwrap());
        let run = run_chain(&backend).await;
        histories.push(history_kinds(&backend, &run).await);
    }
    assert_eq!(
        histories,
        vec![vec!["leased", "committed", "leased", "committed"], vec![]],
        "recorded when on, nothing when off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_keeps_its_step_history_only_when_it_explains_something() {
    let (server, backend) = history_backend("routine:").await;

    // A routine history goes when its run completes; its node timings stay.
    let routine = run_chain(&backend).await;
    assert_eq!(history_kinds(&backend, &routine).await, Vec::<&str>::new());
    let info = backend.run_info(&routine).await.unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    let metrics = backend.metrics(&routine).await.unwrap();
    assert_eq!(metrics.completed, 2, "{metrics:?}");
    assert_eq!(metrics.per_node.len(), 2, "{metrics:?}");

    // While a run is live its history shows; one released lease makes it worth keeping.
    let (live, taken) = started_and_taken(&backend).await;
    assert_eq!(history_kinds(&backend, &live).await, vec!["leased"]);
    backend.release(&taken.lease).await.unwrap();

    let worker = chain().worker(backend.clone()).build().unwrap();
    while worker.run_once("w").await.unwrap().is_none() {}
    assert_eq!(
        history_kinds(&backend, &live).await,
        vec![
            "leased",
            "released",
            "leased",
            "committed",
            "leased",
            "committed"
        ]
    );
    // The kept history expires with its run (G9).
    let mut conn = connection(&server).await;
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("routine:{{p0}}:sh:{live}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the kept history expires with its run: {ttl}");
    let gone: i64 = ::redis::cmd("EXISTS")
        .arg(format!("routine:{{p0}}:sh:{routine}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, 0, "the routine history's key is gone");
}

/// The two fields that keep `run`'s first lease with its items under `prefix` (partition 0),
/// joined by `|`, and whether its history list exists.
async fn kept_first_lease(server: &RedisServer, prefix: &str, run: &str) -> (String, i64) {
    let mut conn = connection(server).await;
    let (hl, hw): (Option<String>, Option<String>) = ::redis::cmd("HMGET")
        .arg(format!("{prefix}{{p0}}:i:{run}"))
        .arg("hl")
        .arg("hw")
        .query_async(&mut conn)
        .await
        .unwrap();
    let list: i64 = ::redis::cmd("EXISTS")
        .arg(format!("{prefix}{{p0}}:sh:{run}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let kept = match (hl, hw) {
        (None, None) => String::new(),
        (hl, hw) => format!("{}|{}", hl.unwrap_or_default(), hw.unwrap_or_default()),
    };
    (kept, list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_first_lease_is_kept_with_its_items_and_read_first() {
    let (server, backend) = history_backend("first:").await;
    let (run, taken) = started_and_taken(&backend).await;

    // Only the first lease so far: its line is with the items, no list was made for it.
    let (kept, list) = kept_first_lease(&server, "first:", &run).await;
    assert!(
        kept.ends_with("|a w"),
        "the first lease's node and worker: {kept:?}"
    );
    assert_eq!(list, 0, "no history list for the first lease alone");
    let history = backend.step_history(&run).await.unwrap().unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0].kind.name(), "leased");
    assert_eq!(history[0].item_id, taken.lease.item_id);
    assert_eq!(history[0].token, taken.lease.token);

    // Later lines go to the list, after it.
    backend
        .heartbeat(&taken.lease, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        history_kinds(&backend, &run).await,
        vec!["leased", "renewed"]
    );
    backend.release(&taken.lease).await.unwrap();
    let worker = chain().worker(backend.clone()).build().unwrap();
    while worker.run_once("w").await.unwrap().is_none() {}
    assert_eq!(
        history_kinds(&backend, &run).await,
        vec![
            "leased",
            "renewed",
            "released",
            "leased",
            "committed",
            "leased",
            "committed"
        ]
    );

    // A routine completion drops the line with the rest of the history.
    let routine = run_chain(&backend).await;
    assert_eq!(history_kinds(&backend, &routine).await, Vec::<&str>::new());
    assert_eq!(
        kept_first_lease(&server, "first:", &routine).await,
        (String::new(), 0),
        "no line of a routine history is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_keeps_its_latest_lines_without_the_first_lease() {
    let (server, backend) = history_backend("long:").await;
    let (run, taken) = started_and_taken(&backend).await;
    // 2,001 renewals: the list passes twice the 1,000 lines kept and is trimmed to them.
    for _ in 0..2_001 {
        backend
            .heartbeat(&taken.lease, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let history = backend.step_history(&run).await.unwrap().unwrap();
    assert_eq!(history.len(), 1_000, "the latest 1,000 lines");
    assert!(
        history.iter().all(|e| e.kind.name() == "renewed"),
        "the first lease's line, older than every line kept, is dropped too"
    );
    let (hl, _) = kept_first_lease(&server, "long:", &run).await;
    assert_eq!(hl, "");
}
