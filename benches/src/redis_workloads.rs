//! The Redis workloads: the backend under `--prefix`, and INFO as the meter.

use floxide_redis::{RedisBackend, RedisClient, RedisConfig};

use crate::workloads::{err, Meter, Target};
use crate::Args;

/// Connects under `--prefix` (default `bench:`) and clears it: to the server `--redis`, or to
/// the Redis Cluster `--cluster` names (seed node URLs, comma-separated, or one
/// `redis+cluster://` URL), with `--partitions N` when given, and without the step history
/// with `--step-history off` (to measure what it costs).
pub(crate) async fn connect(args: &Args) -> Result<RedisBackend, String> {
    let url: String = args.get("redis", "redis://127.0.0.1:6379/".to_owned())?;
    let prefix: String = args.get("prefix", "bench:".to_owned())?;
    let mut config = match args.get::<String>("cluster", String::new())? {
        seeds if seeds.is_empty() => RedisConfig::new(url),
        seeds if seeds.contains("+cluster://") => RedisConfig::new(seeds),
        seeds => RedisConfig::cluster(seeds.split(',').map(str::trim)),
    };
    match args.get::<u32>("partitions", 0)? {
        0 => {}
        n => config = config.with_partitions(n),
    }
    let history = crate::workloads::step_history(args)?;
    let client = RedisClient::new(config.with_key_prefix(prefix).with_step_history(history))
        .await
        .map_err(|e| e.to_string())?;
    client
        .clear()
        .await
        .map_err(|e| format!("clearing the prefix failed: {e}"))?;
    Ok(RedisBackend::new(client))
}

/// `INFO <section>` of the server, or of every master of a cluster (their texts joined).
async fn info(backend: &RedisBackend, section: &str) -> Result<String, String> {
    let value: redis::Value = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut backend.client().connection())
        .await
        .map_err(|e| e.to_string())?;
    fn texts(value: redis::Value, out: &mut String) {
        match value {
            redis::Value::Map(pairs) => pairs.into_iter().for_each(|(_, v)| texts(v, out)),
            redis::Value::Array(items) => items.into_iter().for_each(|v| texts(v, out)),
            other => {
                if let Ok(text) = redis::from_redis_value::<String>(other) {
                    out.push_str(&text);
                    out.push('\n');
                }
            }
        }
    }
    let mut out = String::new();
    texts(value, &mut out);
    Ok(out)
}

/// Total commands the server (every master) executed so far (INFO commandstats).
pub(crate) async fn commands(backend: &RedisBackend) -> Result<u64, String> {
    let info = info(backend, "commandstats").await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// CPU seconds the Redis server (every master) has used so far (INFO cpu: user + system).
pub(crate) async fn server_cpu(backend: &RedisBackend) -> Result<f64, String> {
    let info = info(backend, "cpu").await?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum())
}

/// Bytes Redis holds under the backend's prefix (MEMORY USAGE of every key), per run.
pub(crate) async fn bytes_per_run(backend: &RedisBackend, runs: usize) -> Result<f64, String> {
    let keys = backend.client().deployment_keys().await.map_err(err)?;
    let conn = backend.client().connection();
    let mut total = 0u64;
    for chunk in keys.chunks(1000) {
        // Sent at once on the multiplexed connection (a pipeline could not span a cluster's
        // slots).
        let sizes = chunk.iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            }
        });
        for size in futures_util::future::join_all(sizes).await {
            total += size.map_err(err)?.unwrap_or(0);
        }
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
