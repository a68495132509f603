//! The Redis store: the source of truth for jobs, runs and instances.
//!
//! Key layout, under the configured prefix `p`:
//! - `p:job:{id}`: the job as JSON; `p:account:{a}:jobs` (and `...:group:{g}:jobs`): job ids by
//!   creation time
//! - `p:timers`: job ids scored by their next fire time (ms); what the reconciler re-arms from
//! - `p:timers:unarmed`: timers the pump has yet to hand to RabbitMQ (it does so shortly before they
//!   are due), scored by due time: `{job}|{generation}` for a scheduled fire, the longer member of
//!   `p:timers:delayed` for the others
//! - `p:timers:delayed`: retries and run-nows not yet recorded as runs (`{job}|{gen}|{instant ms}|
//!   {attempt}|{r or m}`), scored by due time: the truth the reconciler heals them from
//! - `p:runs:live`: runs not yet ended, scored by creation time (the stuck-run sweep walks it)
//! - `p:fire:{job}:{ms}`: the run recorded for that fire, so a fire is recorded once
//! - `p:run:{id}`: the run as a hash (state moves only by compare-and-set); `p:job:{id}:runs` its job's runs
//! - `p:run:{id}:log`: the container output, capped (a light run keeps its output in its hash)
//! - `p:instance:{id}`: the instance as a hash; `p:instances:live`: instances not yet terminated
//! - `p:metrics:events`: domain event counters; `p:metrics:fire_lateness`: the lateness histogram

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, TimeZone, Utc};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;
use crate::error::{Error, Result};
use crate::model::{InstanceState, Job, RunState};

mod delayed;
mod instances;
mod lateness;
mod leases;
mod light_fire;
mod runs;
pub use delayed::{is_delayed, ReconcileReport, StuckRun};
pub use lateness::{LatenessHistogram, LATENESS_BUCKETS_MS};
pub use light_fire::{LightFire, TimerMove};
pub use runs::{CancelledRun, RecordedFire};

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

/// A job as stored: its JSON without what reading it back restores anyway (`null`s, empty texts and
/// tags, default policies), so that a million waiting jobs, mostly defaults, take under a kilobyte
/// each; `enabled` and `generation` lead, where the light-fire script reads them without decoding.
fn stored_job_json(job: &Job) -> Result<String> {
    fn strip_nulls(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(job)?;
    if let Some(map) = value.as_object_mut() {
        for field in ["name", "description", "modified_by"] {
            if map.get(field).and_then(|v| v.as_str()) == Some("") {
                map.remove(field);
            }
        }
        if map
            .get("tags")
            .and_then(|v| v.as_array())
            .is_some_and(Vec::is_empty)
        {
            map.remove("tags");
        }
        if job.policies == crate::model::Policies::default() {
            map.remove("policies");
        }
    }
    strip_nulls(&mut value);
    if let serde_json::Value::Object(mut rest) = value {
        let mut ordered = serde_json::Map::with_capacity(rest.len());
        for field in ["enabled", "generation"] {
            if let Some(v) = rest.remove(field) {
                ordered.insert(field.to_string(), v);
            }
        }
        ordered.extend(rest);
        value = serde_json::Value::Object(ordered);
    }
    Ok(serde_json::to_string(&value)?)
}

/// The sorted set of timers not yet handed to RabbitMQ: member `{job_id}|{generation}`, score the due
/// instant in milliseconds.
const UNARMED: &str = "timers:unarmed";

/// The sorted set of runs not yet ended, scored by when they were recorded: what the stuck-run sweep
/// walks. A hint kept up by the scripts that create and end runs; the sweep drops what has ended.
const LIVE_RUNS: &str = "runs:live";

fn unarmed_member(job_id: &str, generation: u64) -> String {
    format!("{job_id}|{generation}")
}

/// A timer the pump took to arm: the fire it delivers, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnarmedTimer {
    pub fire: crate::messages::FireMessage,
    /// When to deliver it: the scheduled instant, or a retry's time after its backoff.
    pub due: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireRecord {
    /// This delivery recorded the fire; the run id is new.
    New(String),
    /// The fire was recorded before (a redelivery); this is its run.
    Existing(String),
    /// The job is gone, or changed since the timer was armed.
    Stale,
    /// The job's timer has moved past this (scheduled) fire: it was fired before.
    Passed,
    /// The job's concurrency policy is `forbid` and this run of it is under way: not recorded.
    Forbidden(String),
}

/// Compare-and-set on a hash's `state`: KEYS[1] hash; ARGV[1] expected, ARGV[2] new, then field/value pairs.
const CAS_STATE: &str = r#"
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 3))
return {1, current}
"#;

/// How long a fire's marker (`fire:{job}:{ms}:{attempt}` → run id) outlives the fire: long past any
/// redelivery of its timer.
const FIRE_MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

static CAS_STATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CAS_STATE));
/// Handle on the store; cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
}

impl Store {
    /// A handle that connects on first use and reconnects on its own after Redis goes away: while it
    /// is away every call fails fast with a retryable error (a 503 at the api, a requeue in a
    /// consumer), and the first call after its return reconnects. Fails only on a malformed URL.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Store> {
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|e| Error::internal(format!("bad redis url: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            // Generous: a light-fire script over a large batch may take a while.
            .set_response_timeout(Some(std::time::Duration::from_secs(15)))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(100))
            .set_max_delay(std::time::Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Store {
            conn,
            prefix: settings.key_prefix.clone(),
        })
    }

    /// [`Store::connect_lazy`], for callers in async code.
    pub async fn connect(settings: &RedisSettings) -> Result<Store> {
        Store::connect_lazy(settings)
    }

    fn key(&self, parts: &str) -> String {
        format!("{}:{}", self.prefix, parts)
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    // ----- jobs -----

    /// Stores a job (new or replaced) and its next fire time in one transaction. A job whose
    /// `next_fire_at` is `None` has no timer.
    pub async fn save_job(&self, job: &Job) -> Result<()> {
        let mut conn = self.conn.clone();
        let json = stored_job_json(job)?;
        let created = job.created_at.timestamp_millis();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.key(&format!("job:{}", job.id)), json)
            .ignore()
            .zadd(
                self.key(&format!("account:{}:jobs", job.account)),
                &job.id,
                created,
            )
            .ignore()
            .zadd(
                self.key(&format!("account:{}:group:{}:jobs", job.account, job.group)),
                &job.id,
                created,
            )
            .ignore();
        match job.next_fire_at {
            Some(next) => pipe.zadd(self.key("timers"), &job.id, next.timestamp_millis()),
            None => pipe.zrem(self.key("timers"), &job.id),
        }
        .ignore();
        // The timer for RabbitMQ: the pump arms it when it comes within the horizon. A replaced job's
        // earlier timer is withdrawn; one already armed is dropped as stale when it fires.
        if job.generation > 1 {
            pipe.zrem(
                self.key(UNARMED),
                unarmed_member(&job.id, job.generation - 1),
            )
            .ignore();
        }
        let member = unarmed_member(&job.id, job.generation);
        match job.next_fire_at {
            Some(next) => pipe.zadd(self.key(UNARMED), member, next.timestamp_millis()),
            None => pipe.zrem(self.key(UNARMED), member),
        }
        .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Removes a job from its group's index (before it moves to another group).
    pub async fn delete_group_entry(&self, job: &Job) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zrem(
                self.key(&format!("account:{}:group:{}:jobs", job.account, job.group)),
                &job.id,
            )
            .await?;
        Ok(())
    }

    /// Deletes a job, its timer, its runs and their logs. Timers still in flight find no job and drop.
    pub async fn delete_job(&self, job: &Job) -> Result<()> {
        let run_ids = self.job_run_ids(&job.id, 0).await?;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key(&format!("job:{}", job.id)))
            .ignore()
            .zrem(self.key(&format!("account:{}:jobs", job.account)), &job.id)
            .ignore()
            .zrem(
                self.key(&format!("account:{}:group:{}:jobs", job.account, job.group)),
                &job.id,
            )
            .ignore()
            .zrem(self.key("timers"), &job.id)
            .ignore()
            .zrem(self.key(UNARMED), unarmed_member(&job.id, job.generation))
            .ignore()
            .del(self.key(&format!("job:{}:runs", job.id)))
            .ignore();
        for run_id in &run_ids {
            pipe.del(self.key(&format!("run:{run_id}")))
                .ignore()
                .del(self.key(&format!("run:{run_id}:log")))
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// A job with its next fire time, or `None`.
    pub async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        let mut conn = self.conn.clone();
        let (raw, next): (Option<String>, Option<f64>) = redis::pipe()
            .get(self.key(&format!("job:{id}")))
            .zscore(self.key("timers"), id)
            .query_async(&mut conn)
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let mut job: Job = serde_json::from_str(&raw)?;
        job.next_fire_at = next.and_then(|ms| Utc.timestamp_millis_opt(ms as i64).single());
        Ok(Some(job))
    }

    /// Several jobs at once (one `MGET`), in the order asked, without their next fire times.
    pub async fn get_jobs(&self, ids: &[&str]) -> Result<Vec<Option<Job>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("job:{id}")))
            .collect();
        let raws: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        // One job that cannot be read back (written by a bug, or by hand) must not fail a listing:
        // it is logged and left out.
        Ok(ids
            .iter()
            .zip(raws)
            .map(|(id, raw)| {
                let raw = raw?;
                serde_json::from_str(&raw)
                    .inspect_err(|err| tracing::error!(job_id = %id, error = %err, "stored job unreadable; left out"))
                    .ok()
            })
            .collect())
    }

    /// An account's jobs (of one group, if given), newest first, `limit` at most (0: all), read in
    /// batches; a job that cannot be read back is left out (see [`Store::get_jobs`]).
    pub async fn list_jobs(
        &self,
        account: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let ids = self.list_job_ids(account, group, limit).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            jobs.extend(self.get_jobs(&refs).await?.into_iter().flatten());
        }
        Ok(jobs)
    }

    /// An account's job ids (of one group, if given), newest first.
    pub async fn list_job_ids(
        &self,
        account: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let stop = if limit == 0 { -1 } else { limit as isize - 1 };
        let index = match group {
            Some(group) => self.key(&format!("account:{account}:group:{group}:jobs")),
            None => self.key(&format!("account:{account}:jobs")),
        };
        Ok(conn.zrevrange(index, 0, stop).await?)
    }

    /// Names a job by a surface's own key (seed 004's image and date, say), unless the name is taken.
    /// Returns the job already holding the name, if any.
    pub async fn claim_alias(
        &self,
        scope: &str,
        alias: &str,
        job_id: &str,
    ) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let key = self.key(&format!("alias:{scope}:{alias}"));
        let set: bool = redis::cmd("SET")
            .arg(&key)
            .arg(job_id)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        if set {
            return Ok(None);
        }
        Ok(conn.get(&key).await?)
    }

    /// The job a surface's own key names.
    pub async fn alias(&self, scope: &str, alias: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn
            .get(self.key(&format!("alias:{scope}:{alias}")))
            .await?)
    }

    /// Moves an alias to another job (after the one it named was replaced).
    pub async fn set_alias(&self, scope: &str, alias: &str, job_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(self.key(&format!("alias:{scope}:{alias}")), job_id)
            .await?;
        Ok(())
    }

    /// Adds a member to a named set (bookkeeping such as the instances a surface controls).
    pub async fn set_add(&self, name: &str, member: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.sadd(self.key(&format!("set:{name}")), member).await?;
        Ok(())
    }

    /// Removes a member; returns whether it was there.
    pub async fn set_remove(&self, name: &str, member: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn.srem(self.key(&format!("set:{name}")), member).await?;
        Ok(removed > 0)
    }

    pub async fn set_members(&self, name: &str) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.key(&format!("set:{name}"))).await?)
    }

    /// How many jobs an account holds.
    pub async fn count_jobs(&self, account: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(conn
            .zcard(self.key(&format!("account:{account}:jobs")))
            .await?)
    }

    /// Jobs whose next fire time is at or before `before`, oldest first.
    pub async fn due_timers(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores(
                self.key("timers"),
                "-inf",
                before.timestamp_millis(),
                0,
                limit as isize,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, ms)| Some((id, Utc.timestamp_millis_opt(ms as i64).single()?)))
            .collect())
    }

    /// Sets or clears a job's next fire time, but only if it is still `expected` and the job is still
    /// at `generation` (so a slow worker never overwrites a newer schedule: an edit landing between a
    /// fire's record and this move may have armed the very same instant for its new generation), and
    /// leaves the new time for the pump to arm.
    pub async fn advance_timer(
        &self,
        job_id: &str,
        generation: u64,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        const SCRIPT: &str = r#"
local raw = redis.call('GET', KEYS[3])
if not raw then return 0 end
local _, stored_generation = job_state(raw)
if stored_generation ~= ARGV[5] then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
return 1
"#;
        static ADVANCE_TIMER: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{}{SCRIPT}", delayed::JOB_STATE_LUA)));
        let mut conn = self.conn.clone();
        let next = next
            .map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default();
        let moved: i64 = ADVANCE_TIMER
            .key(self.key("timers"))
            .key(self.key(UNARMED))
            .key(self.key(&format!("job:{job_id}")))
            .arg(job_id)
            .arg(expected.timestamp_millis())
            .arg(next)
            .arg(unarmed_member(job_id, generation))
            .arg(generation)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved == 1)
    }

    /// Takes up to `limit` timers due at or before `bound` off the unarmed set, for the pump to arm.
    /// Atomic, so several pumps never take the same timer.
    pub async fn claim_unarmed(
        &self,
        bound: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<UnarmedTimer>> {
        const SCRIPT: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
return due
"#;
        static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));
        let mut conn = self.conn.clone();
        let rows: Vec<String> = CLAIM
            .key(self.key(UNARMED))
            .arg(bound.timestamp_millis())
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(rows
            .chunks(2)
            .filter_map(|pair| {
                let [member, score] = pair else { return None };
                delayed::parse_timer_member(member, score)
            })
            .collect())
    }

    /// Puts timers the pump could not arm back, for its next round.
    pub async fn unclaim(&self, timers: &[UnarmedTimer]) -> Result<()> {
        if timers.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let items: Vec<(i64, String)> = timers
            .iter()
            .map(|t| (t.due.timestamp_millis(), delayed::timer_member(&t.fire)))
            .collect();
        let _: () = conn.zadd_multiple(self.key(UNARMED), &items).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerSpec, DummySpec, Policies, Runner, Tag};

    fn job(runner: Runner, policies: Policies) -> Job {
        let now = Utc::now();
        Job {
            id: "j1".into(),
            account: "acme".into(),
            group: "default".into(),
            name: String::new(),
            description: String::new(),
            modified_by: String::new(),
            tags: Vec::new(),
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            runner,
            enabled: true,
            generation: 1,
            policies,
            created_at: now,
            updated_at: now,
            next_fire_at: None,
        }
    }

    #[test]
    fn stored_jobs_read_back_the_same_and_leave_defaults_out() {
        let dummy = job(
            Runner::Dummy(DummySpec {
                template: "x".into(),
                runner_name: None,
            }),
            Policies::default(),
        );
        let text = stored_job_json(&dummy).unwrap();
        assert!(
            !text.contains("policies") && !text.contains("null"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), dummy);

        let mut container = job(
            Runner::Container(ContainerSpec {
                image: "busybox".into(),
                cmd: Some("echo hi".into()),
                env: vec!["A=1".into()],
                max_price: Some("0.05".into()),
                ..ContainerSpec::default()
            }),
            Policies {
                misfire_grace_secs: Some(30),
                timeout_secs: 60,
                ..Policies::default()
            },
        );
        container.name = "nightly".into();
        container.tags = vec![Tag {
            key: "team".into(),
            value: "data".into(),
        }];
        let text = stored_job_json(&container).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), container);
    }

    /// The light-fire script matches `^{"enabled":(%a+),"generation":(%d+)` on the stored text.
    #[test]
    fn stored_jobs_lead_with_enabled_and_generation() {
        let mut disabled = job(
            Runner::Dummy(DummySpec {
                template: r#"{"enabled":true,"generation":1}"#.into(),
                runner_name: None,
            }),
            Policies::default(),
        );
        disabled.enabled = false;
        disabled.generation = 12;
        let text = stored_job_json(&disabled).unwrap();
        assert!(
            text.starts_with(r#"{"enabled":false,"generation":12,"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), disabled);
    }
}
