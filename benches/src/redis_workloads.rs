//! The Redis workloads: the backend under `--prefix`, and INFO as the meter.

use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

use crate::workloads::{err, Meter, Target};
use crate::Args;

/// Connects under `--prefix` (default `bench:`) and clears it.
pub(crate) async fn connect(args: &Args) -> Result<RedisBackend, String> {
    let url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let prefix: String = args.get("prefix", "bench:".to_owned())?;
    let client = RedisClient::new(RedisConfig::new(url).with_key_prefix(prefix))
        .await
        .map_err(|e| e.to_string())?;
    client
        .clear()
        .await
        .map_err(|e| format!("clearing the prefix failed: {e}"))?;
    Ok(RedisBackend::new(client))
}

/// Total commands the server executed so far (INFO commandstats).
pub(crate) async fn commands(backend: &RedisBackend) -> Result<u64, String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut backend.client().connection())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// CPU seconds the Redis server has used so far (INFO cpu: user + system, main thread).
pub(crate) async fn server_cpu(backend: &RedisBackend) -> Result<f64, String> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut backend.client().connection())
        .await
        .map_err(|e| e.to_string())?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum())
}

/// Bytes Redis holds under the backend's prefix (MEMORY USAGE of every key), per run.
pub(crate) async fn bytes_per_run(backend: &RedisBackend, runs: usize) -> Result<f64, String> {
    let pattern = format!("{}*", backend.client().key_prefix());
    let mut conn = backend.client().connection();
    let mut cursor = 0u64;
    let mut total = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.map_err(err)?;
            total += sizes.into_iter().flatten().sum::<u64>();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(total as f64 / runs.max(1) as f64)
}

/// INFO's counters, and MEMORY USAGE of the prefix's keys.
struct Info(RedisBackend);

#[async_trait::async_trait]
impl Meter for Info {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn unit(&self) -> &'static str {
        "cmds"
    }
    async fn operations(&self) -> Result<u64, String> {
        commands(&self.0).await
    }
    async fn cpu(&self) -> Result<f64, String> {
        server_cpu(&self.0).await
    }
    async fn bytes_per_run(&self, runs: usize) -> Result<f64, String> {
        bytes_per_run(&self.0, runs).await
    }
}

/// The Redis target of the `dist-redis-*` workloads.
pub(crate) async fn target(args: &Args) -> Result<Target<RedisBackend>, String> {
    let backend = connect(args).await?;
    Ok(Target {
        family: "dist-redis",
        meter: Box::new(Info(backend.clone())),
        backend,
    })
}
