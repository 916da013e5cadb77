//! [`RedisConnection`]: the shared command connection, to one server or to a cluster.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The backend's shared command connection: to one server (reconnecting by itself), or to a
/// Redis Cluster (following the cluster's slots). Cheap to clone; clones share the
/// connection. Use it with `redis` commands like any async connection:
///
/// ```no_run
/// # async fn f(client: floxide_redis::RedisClient) -> redis::RedisResult<()> {
/// let mut conn = client.connection();
/// let n: u64 = redis::cmd("INCR").arg("my:counter").query_async(&mut conn).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection(Kind);

#[derive(Clone)]
enum Kind {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    pub(crate) fn server(conn: ConnectionManager) -> Self {
        RedisConnection(Kind::Server(conn))
    }

    pub(crate) fn cluster(conn: ClusterConnection) -> Self {
        RedisConnection(Kind::Cluster(conn))
    }

    /// Runs `cmd`, whose arguments name no key, on the master serving `slot` (on one server:
    /// there), e.g. `CLUSTER GETKEYSINSLOT`.
    pub(crate) async fn on_slot<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        slot: u16,
    ) -> redis::RedisResult<T> {
        match &mut self.0 {
            Kind::Server(conn) => cmd.query_async(conn).await,
            Kind::Cluster(conn) => {
                let route = Route::new(slot, SlotAddr::Master);
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(T::from_redis_value(value)?)
            }
        }
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Server(_) => "RedisConnection(server)",
            Kind::Cluster(_) => "RedisConnection(cluster)",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Server(conn) => conn.req_packed_command(cmd),
            Kind::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Kind::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Server(conn) => conn.get_db(),
            Kind::Cluster(conn) => conn.get_db(),
        }
    }
}
