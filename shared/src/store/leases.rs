//! Leases (one holder at a time, expiring, so a crashed holder blocks others only until then), the
//! roll of the processes of a kind that are alive (to share leased work fairly), and the domain
//! event counters the api serves as Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::Store;
use crate::error::Result;

impl Store {
    /// Takes a named lease for `ttl` unless someone holds it; returns the token to release it with.
    /// Leases expire, so a holder that crashes blocks others only until then.
    pub async fn try_lease(&self, name: &str, ttl: std::time::Duration) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let token = crate::ids::new_id();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("lease:{name}")))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(taken.map(|_| token))
    }

    /// Takes this period's turn at a periodic task (a sweep, a reconcile) unless another process took
    /// it: the lease is held for most of the period and never released, so the task runs once per
    /// period however many processes try. `true` when the turn is ours.
    pub async fn take_turn(&self, task: &str, period: std::time::Duration) -> Result<bool> {
        Ok(self
            .try_lease(&format!("turn:{task}"), period.mul_f64(0.9))
            .await?
            .is_some())
    }

    /// Whether someone holds the named lease now.
    pub async fn lease_held(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.key(&format!("lease:{name}"))).await?)
    }

    /// Extends a lease by `ttl` if it is still ours (`token`); `false` when it was lost (expired, and
    /// perhaps taken by another).
    pub async fn renew_lease(
        &self,
        name: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        static RENEW: LazyLock<Script> = LazyLock::new(|| {
            Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
            )
        });
        let mut conn = self.conn.clone();
        let renewed: i64 = RENEW
            .key(self.key(&format!("lease:{name}")))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Says `member` of `kind` (a provisioner, say) is alive, and returns how many of its kind
    /// said so within `ttl` (itself included): the others are taken off the roll.
    pub async fn announce(
        &self,
        kind: &str,
        member: &str,
        ttl: std::time::Duration,
    ) -> Result<u64> {
        let now = chrono::Utc::now().timestamp_millis();
        let roll = self.key(&format!("roll:{kind}"));
        let mut conn = self.conn.clone();
        let (alive,): (u64,) = redis::pipe()
            .atomic()
            .zadd(&roll, member, now)
            .ignore()
            .zrembyscore(&roll, "-inf", now - ttl.as_millis() as i64)
            .ignore()
            .zcard(&roll)
            .query_async(&mut conn)
            .await?;
        Ok(alive)
    }

    /// Takes `member` off its kind's roll (it is stopping).
    pub async fn withdraw(&self, kind: &str, member: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.key(&format!("roll:{kind}")), member).await?;
        Ok(())
    }

    /// Releases a lease if it is still ours.
    pub async fn release_lease(&self, name: &str, token: &str) -> Result<()> {
        static RELEASE: LazyLock<Script> = LazyLock::new(|| {
            Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        let mut conn = self.conn.clone();
        let _: i64 = RELEASE
            .key(self.key(&format!("lease:{name}")))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    // ----- domain counters (served as Prometheus metrics by the api) -----

    /// Adds `by` to a named event counter shared by every service.
    pub async fn count_event(&self, event: &str, by: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.hincr(self.key("metrics:events"), event, by).await?;
        Ok(())
    }

    /// Counts an event; a counter that cannot be written is logged, never a failure of the work.
    pub async fn note_event(&self, event: &str, by: u64) {
        if by == 0 {
            return;
        }
        if let Err(err) = self.count_event(event, by).await {
            tracing::warn!(event, error = %err, "event not counted");
        }
    }

    /// Every event counter.
    pub async fn event_counts(&self) -> Result<BTreeMap<String, u64>> {
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(self.key("metrics:events")).await?)
    }

    /// How many instances are not yet terminated.
    pub async fn live_instance_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(conn.scard(self.key("instances:live")).await?)
    }
}
