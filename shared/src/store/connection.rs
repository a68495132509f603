//! The store's one connection: a single Redis (a self-reconnecting [`ConnectionManager`]) or a Redis
//! Cluster (the `redis` crate's cluster client, which follows the slot map through failovers, made
//! anew when it stalls: [`HealingCluster`]), and the `WAIT` that makes an acknowledged write outlive
//! its primary.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;
use crate::error::{Error, Result};

/// How long a short `WAIT` (a replica down or behind) switches the waiting off: every write would
/// otherwise hold the shared connection for the whole timeout.
const DEGRADED_FOR: Duration = Duration::from_secs(5);

/// How long every request on a cluster connection must have timed out, none answered, before the
/// connection is given up for a new one.
const STALLED_FOR: Duration = Duration::from_secs(30);

/// A connection to a single Redis or to a cluster; cheap to clone, commands multiplexed.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(HealingCluster),
}

/// A cluster connection that is replaced by a new one once its requests have only timed out for
/// [`STALLED_FOR`]. The client's own recovery after a failover (a refresh of the slot map) can hang
/// for good: seen in the chaos scenario on the clusters, where after a primary was killed one
/// provisioner's every call timed out for minutes, its client having begun one refresh and never
/// finished it, while every other process recovered within seconds. A clone takes the current
/// connection.
pub(super) struct HealingCluster {
    conn: ClusterConnection,
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    client: redis::cluster::ClusterClient,
    config: redis::cluster::ClusterConfig,
    state: Mutex<ClusterState>,
}

struct ClusterState {
    current: ClusterConnection,
    stall: Stall,
}

impl Clone for HealingCluster {
    fn clone(&self) -> Self {
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        HealingCluster {
            conn: state.current.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl HealingCluster {
    fn new(client: redis::cluster::ClusterClient, config: redis::cluster::ClusterConfig) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        HealingCluster {
            conn: conn.clone(),
            shared: Arc::new(ClusterShared {
                client,
                config,
                state: Mutex::new(ClusterState {
                    current: conn,
                    stall: Stall::default(),
                }),
            }),
        }
    }

    /// Notes how a request ended; a timeout that completes a stall makes the next clones use a
    /// new connection (requests in flight on the old one end as they would have).
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        let timed_out = match result {
            Ok(_) => false,
            Err(err) => err.is_timeout(),
        };
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !timed_out {
            state.stall.answered();
        } else if state.stall.timed_out(Instant::now()) {
            tracing::warn!(
                stalled_for = ?STALLED_FOR,
                "every Redis Cluster request has timed out for a while; connecting anew"
            );
            state.current = self
                .shared
                .client
                .get_pending_async_connection_with_config(self.shared.config.clone());
        }
    }
}

/// Whether a connection's requests have done nothing but time out for [`STALLED_FOR`]. An answer
/// of any kind, an error included, shows the connection alive.
#[derive(Debug, Default)]
struct Stall {
    since: Option<Instant>,
}

impl Stall {
    fn answered(&mut self) {
        self.since = None;
    }

    /// Notes a timeout at `now`: `true` when the timeouts began [`STALLED_FOR`] ago or more with
    /// no answer between (and the count starts over, for the new connection).
    fn timed_out(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= STALLED_FOR {
            self.since = None;
            return true;
        }
        false
    }
}

impl Connection {
    /// Connects on first use and reconnects on its own; fails only on a malformed URL.
    pub(super) fn open_lazy(settings: &RedisSettings) -> Result<Connection> {
        let bad_url = |e: redis::RedisError| Error::internal(format!("bad redis url: {e}"));
        if settings.cluster {
            let nodes: Vec<&str> = settings
                .nodes()
                .into_iter()
                .map(|url| url.expose_secret())
                .collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(Duration::from_secs(2))
                // Generous: a light-fire script over a large batch may take a while.
                .response_timeout(Duration::from_secs(15))
                // A failover takes the cluster's node timeout and an election: a request retries
                // across it (MOVED, a refused connection), then fails retryable.
                .retries(6)
                .min_retry_wait(100)
                .max_retry_wait(1000)
                .build()
                .map_err(bad_url)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(Duration::from_secs(15));
            return Ok(Connection::Cluster(HealingCluster::new(client, config)));
        }
        // RESP3 (Redis 6 and later; the scripts already need 6.2) makes the connection tell the
        // manager when Redis closes it, so it reconnects then: on RESP2 it learns only from the
        // next request, which fails, and an idle api answered its first request after a Redis
        // restart with a 503.
        let info = settings
            .url
            .expose_secret()
            .into_connection_info()
            .map_err(bad_url)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(bad_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(15)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        Ok(Connection::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }
}

/// On a single Redis, a request refused a connection (the manager's last reconnect failed while Redis
/// was down) is sent once more, on the connection the refusal set going: a refused connection sent
/// nothing, so no write can land twice.
impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => Box::pin(async move {
                match conn.req_packed_command(cmd).await {
                    Err(err) if err.is_connection_refusal() => conn.req_packed_command(cmd).await,
                    result => result,
                }
            }),
            Connection::Cluster(cluster) => Box::pin(async move {
                let result = cluster.conn.req_packed_command(cmd).await;
                cluster.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => Box::pin(async move {
                match conn.req_packed_commands(pipeline, offset, count).await {
                    Err(err) if err.is_connection_refusal() => {
                        conn.req_packed_commands(pipeline, offset, count).await
                    }
                    result => result,
                }
            }),
            Connection::Cluster(cluster) => Box::pin(async move {
                let result = cluster
                    .conn
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                cluster.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(cluster) => cluster.conn.get_db(),
        }
    }
}

/// How many replicas an acknowledged write waits for, and whether waiting is off for a while.
pub(super) struct Replication {
    replicas: u8,
    timeout_ms: u64,
    /// Until when (ms since the epoch) writes do not wait: a recent `WAIT` came back short.
    degraded_until_ms: AtomicI64,
}

/// What one `WAIT` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replicated {
    /// Nothing to wait for (`wait_replicas = 0`).
    NotAsked,
    /// The replicas asked for hold every write made before it.
    Held,
    /// Fewer replicas answered in time (or the wait is off after such an answer): the write stands.
    Short,
}

impl Replication {
    pub(super) fn new(settings: &RedisSettings) -> Arc<Replication> {
        Arc::new(Replication {
            replicas: settings.wait_replicas,
            timeout_ms: settings.wait_timeout_ms.max(1),
            degraded_until_ms: AtomicI64::new(0),
        })
    }

    /// `WAIT` for the replicas asked for, on `conn` (the connection the writes went through, which
    /// is every write of this process: `WAIT` covers them all). On a cluster it goes to the primary
    /// of `slot_key`'s slot, where the write went (the client keeps one connection per node).
    pub(super) async fn wait(&self, conn: &mut Connection, slot_key: &str) -> Result<Replicated> {
        if self.replicas == 0 {
            return Ok(Replicated::NotAsked);
        }
        let now_ms = Utc::now().timestamp_millis();
        if now_ms < self.degraded_until_ms.load(Ordering::Relaxed) {
            return Ok(Replicated::Short);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.replicas).arg(self.timeout_ms);
        let acked: i64 = match conn {
            Connection::Single(conn) => wait.query_async(conn).await?,
            Connection::Cluster(cluster) => {
                let primary = Route::with_key(slot_key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary));
                let answer = cluster.conn.route_command(wait, routing).await;
                cluster.observe(&answer);
                let answer = answer?;
                redis::from_redis_value(answer).map_err(redis::RedisError::from)?
            }
        };
        if acked >= i64::from(self.replicas) {
            return Ok(Replicated::Held);
        }
        self.degraded_until_ms
            .store(now_ms + DEGRADED_FOR.as_millis() as i64, Ordering::Relaxed);
        tracing::warn!(
            acked,
            wanted = self.replicas,
            "Redis replicas did not confirm a write in time; writes go on without waiting for {:?}",
            DEGRADED_FOR
        );
        Ok(Replicated::Short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_for_the_whole_stretch_give_a_connection_up() {
        let start = Instant::now();
        let mut stall = Stall::default();
        assert!(!stall.timed_out(start));
        assert!(!stall.timed_out(start + STALLED_FOR / 2));
        // An answer in between starts the stretch over.
        stall.answered();
        assert!(!stall.timed_out(start + STALLED_FOR));
        assert!(!stall.timed_out(start + STALLED_FOR + STALLED_FOR / 2));
        assert!(stall.timed_out(start + STALLED_FOR * 2));
        // Given up once; the new connection gets a stretch of its own.
        assert!(!stall.timed_out(start + STALLED_FOR * 2));
        assert!(stall.timed_out(start + STALLED_FOR * 3));
    }
}
