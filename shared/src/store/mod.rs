//! The Redis store: the source of truth for jobs, runs and instances. One file per thing stored, each
//! opening with the keys it owns (under the configured prefix `p`):
//! - jobs, in [`jobs`]: `p:job:{id}` and the account and group indexes (on a cluster, with the notes
//!   that settle them in [`index_entries`]);
//! - timers, in [`timers`]: `p:timers` (each job's next fire), `p:timers:unarmed` (near fires the
//!   pump has yet to hand to RabbitMQ) and `p:timers:unarmed:until` (how near);
//! - delayed fires, in [`delayed`]: `p:timers:delayed` (retries and run-nows not yet recorded);
//! - runs, in [`runs`]: `p:fire:*` markers, `p:run:{id}`, `p:job:{id}:runs`, logs, `p:runs:live`
//!   ([`light_fire`] records many light runs in one script);
//! - instances, in [`instances`]: `p:instance:{id}`, `p:instances:live`;
//! - leases and turns that keep one worker on a task, in [`leases`]; metrics, in [`lateness`];
//! - the shards a job's keys (record, timers, runs) are split over, in [`shards`]: those keys are
//!   under their shard's prefix, the rest under `p`;
//! - what the run-time quotas count (slots held, fires per minute), in [`quota_counts`];
//! - what terminated instances cost, summed per day, month, account and market, in [`costs`];
//! - jobs set aside because their record cannot be read, in [`quarantine`]: `p:quarantine`;
//! - the first answers to requests with an `Idempotency-Key`, in [`idempotency`]: `p:idem:*`;
//! - each job's failures in a row, which may pause it, in [`pauses`].
//!
//! The connection (a single Redis or a cluster) and the `WAIT` after acknowledged writes are in
//! [`connection`]. This file holds the handle and the compare-and-set every state change goes
//! through.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use crate::config::RedisSettings;
use crate::error::{Error, Result};
use crate::model::{InstanceState, RunState};

mod account_groups;
mod arrays;
mod audit;
mod backfills;
mod connection;
mod costs;
mod delayed;
mod far_timers;
mod finite;
mod idempotency;
mod index_entries;
mod instances;
mod job_batches;
mod job_record;
mod jobs;
mod lateness;
mod leases;
mod light_fire;
mod notifications;
mod pauses;
mod quarantine;
mod queues;
mod quota_counts;
mod runs;
mod scripts;
mod shards;
mod timers;
pub use arrays::ArrayStep;
pub use backfills::{Backfill, MAX_BACKFILL_CONCURRENCY, MAX_BACKFILL_RUNS};
use connection::{Connection, Replicated, Replication};
pub use costs::{CostRecord, UsageRow};
pub use delayed::{ReconcileReport, Relaunch, StuckRun};
pub use far_timers::Promoted;
pub use finite::DELETED_JOB_RUNS_TTL_SECS;
pub use idempotency::{Begun, IdempotentRequest, SavedAnswer};
pub use index_entries::SettledEntries;
pub use job_batches::Created;
pub use lateness::{LatenessHistogram, LATENESS_BUCKETS_MS};
pub use light_fire::{LightFire, TimerMove};
pub use notifications::{DueNotification, NotifyRound, KEPT_ATTEMPTS};
pub use quarantine::{JobRecord, QuarantinedJob};
pub use queues::QueueStep;
pub use quota_counts::SlotKind;
pub use runs::{CancelledRun, FireRecord, FireStep, RecordedFire};
pub use shards::{Shards, MAX_SHARDS};
pub use timers::is_delayed;
pub use timers::UnarmedTimer;

/// A state machine whose current state lives in the `state` field of a Redis hash.
pub trait HashState: Copy + PartialEq + Display + FromStr<Err = Error> {
    fn check_move(self, next: Self) -> Result<()>;
}

impl HashState for RunState {
    fn check_move(self, next: Self) -> Result<()> {
        RunState::check_move(self, next)
    }
}

impl HashState for InstanceState {
    fn check_move(self, next: Self) -> Result<()> {
        InstanceState::check_move(self, next)
    }
}

/// What a state change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved<S> {
    /// The state moved from this one.
    From(S),
    /// The record was already in the target state; nothing changed.
    AlreadyThere,
}

/// Compare-and-set on a hash's `state`: KEYS[1] hash; ARGV[1] expected, ARGV[2] new, then field/value pairs.
const CAS_STATE: &str = r#"
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 3))
return {1, current}
"#;

static CAS_STATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CAS_STATE));
/// Handle on the store; cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Store {
    conn: Connection,
    /// What every key of an account or of the deployment starts with: the configured prefix, as a
    /// hash tag on a cluster (`{spot}`), so that each script on them is in one slot.
    prefix: String,
    /// Where the keys of each job (record, timers, runs) are.
    shards: Arc<Shards>,
    /// On a cluster a transaction or pipeline stays within one slot, so the writes to a job and to
    /// its account's indexes go as two steps; on a single Redis they stay one.
    cluster: bool,
    replication: Arc<Replication>,
    /// Accounts with default notifications: their runs all ask for them ([`Store::notifies`]).
    notifying_accounts: Arc<HashMap<String, Vec<crate::model::NotifyEvent>>>,
}

impl Store {
    /// A handle that connects on first use and reconnects on its own after Redis goes away (on a
    /// cluster: follows a failover to the promoted replica): while it is away every call fails fast
    /// with a retryable error (a 503 at the api, a requeue in a consumer), and the first call after
    /// its return reconnects. Fails only on a malformed URL.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Store> {
        let prefix = if settings.cluster {
            format!("{{{}}}", settings.key_prefix)
        } else {
            settings.key_prefix.clone()
        };
        Ok(Store {
            conn: Connection::open_lazy(settings)?,
            prefix,
            shards: Arc::new(Shards::new(
                &settings.key_prefix,
                settings.timer_shards,
                settings.cluster,
            )),
            cluster: settings.cluster,
            replication: Replication::new(settings),
            notifying_accounts: Arc::default(),
        })
    }

    /// [`Store::connect_lazy`], for callers in async code.
    pub async fn connect(settings: &RedisSettings) -> Result<Store> {
        Store::connect_lazy(settings)
    }

    fn key(&self, parts: &str) -> String {
        format!("{}:{}", self.prefix, parts)
    }

    /// A key in the shard of `owner`, a job's id or one of its runs' (drawn in its job's shard).
    fn owned_key(&self, owner: &str, parts: &str) -> String {
        self.shard_key(self.shards.of(owner), parts)
    }

    /// A key in `shard`.
    fn shard_key(&self, shard: u16, parts: &str) -> String {
        format!("{}:{}", self.shards.prefix(shard), parts)
    }

    /// The shards this deployment's jobs are split over.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// `each(shard)` for every shard at once, the answers in shard order.
    async fn on_every_shard<T, F, Fut>(&self, each: F) -> Result<Vec<T>>
    where
        F: Fn(u16) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        futures::future::try_join_all(self.shards.all().map(each)).await
    }

    /// The `limit` lowest-scored members of a sorted set of every shard (`set` names it within
    /// the shard), with their scores, in no order: at most `limit` per shard.
    async fn lowest_in_every_shard(&self, set: &str, limit: usize) -> Result<Vec<(String, f64)>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let rows: Vec<(String, f64)> = conn
                    .zrange_withscores(self.shard_key(shard, set), 0, limit as isize - 1)
                    .await?;
                Ok(rows)
            })
            .await?;
        Ok(per_shard.into_iter().flatten().collect())
    }

    /// Groups `items` by the shard of the id `owner` names, keeping their order within a shard.
    fn by_shard<'a, T>(
        &self,
        items: &'a [T],
        owner: impl Fn(&T) -> &str,
    ) -> BTreeMap<u16, Vec<&'a T>> {
        let mut groups: BTreeMap<u16, Vec<&T>> = BTreeMap::new();
        for item in items {
            groups
                .entry(self.shards.of(owner(item)))
                .or_default()
                .push(item);
        }
        groups
    }

    /// One answer per id, asked of every shard the ids fall in at once: `ask(shard, its ids)`
    /// answers that shard's ids in order (one round trip, as a pipeline or an `MGET`). The answers
    /// come back in the order of `ids`; an id an `ask` left unanswered gets `R::default()`.
    async fn ask_by_shard<'a, R, F, Fut>(&self, ids: &[&'a str], ask: F) -> Result<Vec<R>>
    where
        R: Default,
        F: Fn(u16, Vec<&'a str>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<R>>>,
    {
        let indexed: Vec<(usize, &'a str)> = ids.iter().copied().enumerate().collect();
        let groups = self.by_shard(&indexed, |(_, id)| id);
        let asked = groups.iter().map(|(&shard, group)| {
            let shard_ids = group.iter().map(|(_, id)| *id).collect();
            ask(shard, shard_ids)
        });
        let answered = futures::future::try_join_all(asked).await?;
        let mut answers: Vec<R> = std::iter::repeat_with(R::default).take(ids.len()).collect();
        for (group, group_answers) in groups.values().zip(answered) {
            for ((index, _), answer) in group.iter().zip(group_answers) {
                answers[*index] = answer;
            }
        }
        Ok(answers)
    }

    /// A new run id for a fire of `job_id`: in the job's shard, so the run is found from its id.
    pub fn new_run_id(&self, job_id: &str) -> String {
        self.shards.id_in(self.shards.of(job_id))
    }

    /// Checks that this deployment's keys were laid out for as many shards as configured, writing
    /// the count on first use: keys are found through it, so another count would lose every job of
    /// the moved shards. A deployment older than shards (its timers under the plain prefix, no
    /// count recorded) was laid out for one. A mismatch is a non-retryable error naming both.
    pub async fn check_layout(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.key("layout:timer_shards");
        let ours = self.shards.count().to_string();
        let recorded: bool = conn.exists(&key).await?;
        let unsharded: u64 = match recorded || self.shards.count() == 1 {
            true => 0,
            false => {
                let keys = ["timers", "timers:delayed", "runs:live"].map(|set| self.key(set));
                redis::cmd("EXISTS")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?
            }
        };
        let first = if unsharded > 0 {
            "1".to_string()
        } else {
            ours.clone()
        };
        let _: bool = conn.set_nx(&key, &first).await?;
        let stored: Option<String> = conn.get(&key).await?;
        match stored {
            Some(stored) if stored != ours => Err(Error::internal(format!(
                "redis.timer_shards is {ours}, but this deployment's keys were laid out for \
                 {stored} shards: set it back to {stored}"
            ))),
            _ => Ok(()),
        }
    }

    /// Waits, after an acknowledged write, for the replicas `redis.wait_replicas` asks for to hold
    /// it, so that a failover (a replica promoted) does not lose it. A replica that does not answer
    /// in time leaves the write standing (counted as `writes_unreplicated`): a missing replica
    /// makes writes less safe, never refused.
    /// `owner` names the shard written (a job's or run's id); the wait goes to that slot's primary.
    async fn replicated(&self, owner: &str) -> Result<()> {
        self.replicated_at(&self.owned_key(owner, "")).await
    }

    /// Whether a job's keys and its account's indexes may be in different slots: on a cluster with
    /// more than one shard (with one, every key is under the plain prefix's tag). Writes to both
    /// are then two steps, each in one slot.
    pub(crate) fn indexes_apart(&self) -> bool {
        self.cluster && self.shards.count() > 1
    }

    /// [`Store::replicated`] after a write to a job and to its account's indexes: when they are
    /// apart ([`Store::indexes_apart`]) both slots' primaries are waited for, at once.
    async fn replicated_with_account(&self, owner: &str) -> Result<()> {
        if !self.indexes_apart() {
            return self.replicated(owner).await;
        }
        let account = self.key("");
        futures::future::try_join(self.replicated(owner), self.replicated_at(&account)).await?;
        Ok(())
    }

    async fn replicated_at(&self, slot_key: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        if self.replication.wait(&mut conn, slot_key).await? == Replicated::Short {
            self.note_event("writes_unreplicated", 1).await;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

impl Store {
    /// The compare-and-set loop behind every state change: read, check legality, swap if unchanged.
    /// `script` is [`CAS_STATE`] or one that does more on a swap: it takes `keys` (the hash first),
    /// then ARGV expected, new, the `extra` arguments, then the field/value pairs to set.
    #[allow(clippy::too_many_arguments)]
    async fn advance_hash<S: HashState>(
        &self,
        script: &Script,
        keys: &[String],
        extra: &[String],
        kind: &str,
        id: &str,
        to: S,
        fields: &[(&str, String)],
    ) -> Result<Moved<S>> {
        let mut conn = self.conn.clone();
        let stamp = Utc::now().to_rfc3339();
        let time_field = format!("t:{to}");
        let key = &keys[0];
        for _ in 0..8 {
            let current: Option<String> = conn.hget(key, "state").await?;
            let current: S = current
                .ok_or_else(|| Error::not_found(format!("no {kind} {id}")))?
                .parse()?;
            if current == to {
                return Ok(Moved::AlreadyThere);
            }
            current.check_move(to)?;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(current.to_string()).arg(to.to_string());
            for arg in extra {
                invocation.arg(arg);
            }
            invocation.arg(&time_field).arg(&stamp);
            for (field, value) in fields {
                invocation.arg(*field).arg(value);
            }
            let (swapped, _seen): (i64, String) = invocation.invoke_async(&mut conn).await?;
            if swapped == 1 {
                return Ok(Moved::From(current));
            }
        }
        Err(Error::unavailable(format!(
            "{kind} {id} kept changing under us"
        )))
    }
}

fn state_time_field(state: RunState) -> String {
    format!("t:{state}")
}

fn parse_time(value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::internal(format!("bad stored time {value:?}: {e}")))
}

fn optional(map: &BTreeMap<String, String>, field: &str) -> Option<String> {
    map.get(field).filter(|v| !v.is_empty()).cloned()
}

fn required<'a>(map: &'a BTreeMap<String, String>, field: &str) -> Result<&'a String> {
    map.get(field)
        .ok_or_else(|| Error::internal(format!("stored record lacks {field}")))
}

/// The `t:{state}` fields of a hash, as a map from state to time.
fn transitions<S: FromStr + Ord>(map: &BTreeMap<String, String>) -> BTreeMap<S, DateTime<Utc>> {
    map.iter()
        .filter_map(|(field, value)| {
            let state = field.strip_prefix("t:")?.parse().ok()?;
            Some((state, parse_time(value).ok()?))
        })
        .collect()
}
