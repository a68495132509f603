//! What the run-time quotas count, one key per account and kind:
//! - `p:quota:slots:{kind}:{account}`, a sorted set of holders (run ids) scored by when each hold
//!   expires: live instances and HTTP tasks held open. Taking a slot and the count are one script,
//!   so concurrent launches cannot overshoot; a holder that crashes without releasing is dropped
//!   when its hold expires, so a lost release never blocks an account for good.
//! - `p:quota:fires:{account}:{minute}`, a hash of run id → the order in which the minute's fires
//!   of the account reached a launch; a redelivered fire keeps its place. Kept two minutes.
//! - `p:metrics:quota_refusals`, a hash of `quota` and account → refusals, for `/metrics`.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::Store;
use crate::error::Result;

/// KEYS[1] the slots; ARGV[1] holder, ARGV[2] limit, ARGV[3] now (ms), ARGV[4] hold until (ms).
/// Returns 1 when the holder has a slot (new, or renewed), 0 when the slots are full.
const TAKE_SLOT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  return 1
end
return 0
"#;

/// KEYS[1] the minute's hash; ARGV[1] run id. The run's place among the minute's fires.
const FIRE_PLACE: &str = r#"
local place = redis.call('HGET', KEYS[1], ARGV[1])
if place then return tonumber(place) end
place = redis.call('HINCRBY', KEYS[1], '#', 1)
redis.call('HSET', KEYS[1], ARGV[1], place)
redis.call('EXPIRE', KEYS[1], 120)
return place
"#;

static TAKE_SLOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_SLOT));
static FIRE_PLACE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FIRE_PLACE));

/// The longest a slot is held without renewal (a week's timeout and then some).
const MAX_HOLD: Duration = Duration::from_secs(31 * 86_400);

/// What a slot is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// An instance launched for a run, until it is terminated.
    Instance,
    /// An HTTP task's call held open, until it ends.
    HttpTask,
}

impl SlotKind {
    fn as_str(self) -> &'static str {
        match self {
            SlotKind::Instance => "instance",
            SlotKind::HttpTask => "http",
        }
    }
}

impl Store {
    fn slots_key(&self, kind: SlotKind, account: &str) -> String {
        self.key(&format!("quota:slots:{}:{account}", kind.as_str()))
    }

    /// Takes (or renews) `holder`'s slot of `kind` for `hold`, if the account holds fewer than `limit`.
    pub async fn take_slot(
        &self,
        kind: SlotKind,
        account: &str,
        holder: &str,
        limit: u64,
        hold: Duration,
    ) -> Result<bool> {
        let now = Utc::now().timestamp_millis();
        let until = now + i64::try_from(hold.min(MAX_HOLD).as_millis()).unwrap_or(0);
        let mut conn = self.conn.clone();
        let taken: i64 = TAKE_SLOT_SCRIPT
            .key(self.slots_key(kind, account))
            .arg(holder)
            .arg(limit)
            .arg(now)
            .arg(until)
            .invoke_async(&mut conn)
            .await?;
        Ok(taken == 1)
    }

    /// Gives `holder`'s slot back (nothing if it holds none).
    pub async fn release_slot(&self, kind: SlotKind, account: &str, holder: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.slots_key(kind, account), holder).await?;
        Ok(())
    }

    /// How many slots of `kind` the account holds now (expired holds not counted).
    pub async fn slots_held(&self, kind: SlotKind, account: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let now = Utc::now().timestamp_millis();
        Ok(conn
            .zcount(self.slots_key(kind, account), format!("({now}"), "+inf")
            .await?)
    }

    /// The run's place (1, 2, ...) among the account's fires due in the same minute as `due`.
    pub async fn fire_place_in_minute(
        &self,
        account: &str,
        due: DateTime<Utc>,
        run_id: &str,
    ) -> Result<u64> {
        let minute = due.timestamp().div_euclid(60);
        let mut conn = self.conn.clone();
        let place: i64 = FIRE_PLACE_SCRIPT
            .key(self.key(&format!("quota:fires:{account}:{minute}")))
            .arg(run_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(u64::try_from(place).unwrap_or(0))
    }
}

impl Store {
    /// Counts a refusal over `quota` (`max_jobs`) of `account`; a counter that cannot be written is
    /// logged, never a failure of the work.
    pub async fn note_quota_refusal(&self, quota: &str, account: &str) {
        let mut conn = self.conn.clone();
        let counted: redis::RedisResult<i64> = conn
            .hincr(
                self.key("metrics:quota_refusals"),
                format!("{quota}\n{account}"),
                1,
            )
            .await;
        if let Err(err) = counted {
            tracing::warn!(quota, error = %err, "quota refusal not counted");
        }
    }

    /// Refusals by (quota, account).
    pub async fn quota_refusals(&self) -> Result<BTreeMap<(String, String), u64>> {
        let mut conn = self.conn.clone();
        let counts: BTreeMap<String, u64> =
            conn.hgetall(self.key("metrics:quota_refusals")).await?;
        Ok(counts
            .into_iter()
            .filter_map(|(field, count)| {
                let (quota, account) = field.split_once('\n')?;
                Some(((quota.to_string(), account.to_string()), count))
            })
            .collect())
    }
}
