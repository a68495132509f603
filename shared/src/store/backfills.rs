//! Backfills (`POST /v1/jobs/{id}/backfill`): a run for each instant of a job's schedule in a range,
//! all recorded in one step as `queued` runs marked with the backfill, started `concurrency` at a
//! time (each end starts the next), cancellable as a whole.
//!
//! Keys, under the job's shard prefix `p`:
//! - `p:backfill:{id}`: the backfill (job, range, total, concurrency, state `running`, `done` or
//!   `cancelled`); `p:job:{job}:backfills` the job's, scored by creation time
//! - `p:backfill:{id}:line`: `{run id}|{instant ms}` of the runs not started yet, oldest first;
//!   `p:backfill:{id}:live` the runs started and not known to have ended
//! - `p:backfills`: `{job}/{backfill}` of the shard's running backfills, which the reaper's sweep
//!   walks so that a crash between a run's end and the next start never stalls one

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};
use serde::Serialize;
use utoipa::ToSchema;

use super::scripts::{LIVE_RUNS, TRIM_ENDED_LUA, UNARMED};
use super::{optional, parse_time, Store};
use crate::error::{Error, Result};
use crate::model::Job;

/// The most instants one backfill may cover.
pub const MAX_BACKFILL_RUNS: usize = 10_000;

/// The most runs of one backfill under way at once.
pub const MAX_BACKFILL_CONCURRENCY: u32 = 100;

const ACTIVE: &str = "backfills";

/// A backfill as the api shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Backfill {
    pub id: String,
    pub job_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Runs in all, one per instant.
    pub total: u64,
    /// At most this many under way at once.
    pub concurrency: u32,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    /// Runs not started yet.
    pub waiting: u64,
    /// Runs started and not known to have ended.
    pub under_way: u64,
}

/// KEYS: the job's runs, the backfill, its line, the job's backfills, the shard's running backfills.
/// ARGV: prefix, backfill id, job id, account, now (RFC 3339), now (ms), concurrency, from, to, the
/// events the runs are noted for ('' for none), then (run id, instant RFC 3339, instant ms) triples.
/// Records every run `queued`, in order.
const CREATE: &str = r#"
local prefix, id, job, account, now, now_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local total = 0
for i = 11, #ARGV, 3 do
  local run_id = ARGV[i]
  redis.call('HSET', prefix .. ':run:' .. run_id, 'id', run_id, 'job_id', job, 'account', account,
    'attempt', '1', 'scheduled_at', ARGV[i + 1], 'state', 'queued', 't:queued', now, 'backfill', id)
  if ARGV[10] ~= '' then redis.call('HSET', prefix .. ':run:' .. run_id, 'notify', ARGV[10]) end
  redis.call('ZADD', KEYS[1], now_ms, run_id)
  redis.call('RPUSH', KEYS[3], run_id .. '|' .. ARGV[i + 2])
  total = total + 1
end
redis.call('HSET', KEYS[2], 'job_id', job, 'from', ARGV[8], 'to', ARGV[9], 'total', total,
  'concurrency', ARGV[7], 'state', 'running', 'created_at', now)
redis.call('ZADD', KEYS[4], now_ms, id)
redis.call('SADD', KEYS[5], job .. '/' .. id)
return total
"#;
static CREATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CREATE));

/// KEYS: the backfill, its line, its live runs, live runs, delayed, unarmed, the shard's running
/// backfills. ARGV: prefix, job id, generation, now (ms), now (RFC 3339), backfill id. Forgets the
/// started runs that have ended, then starts runs from the line until `concurrency` are under way:
/// each moves to `pending` with its launch armed, due now. A backfill with nothing left is `done`.
/// Returns the runs started.
const START_NEXT: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {} end
local prefix = ARGV[1]
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not live_states[redis.call('HGET', prefix .. ':run:' .. id, 'state') or ''] then
    redis.call('SREM', KEYS[3], id)
  end
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'concurrency'))
local started = {}
while redis.call('SCARD', KEYS[3]) < limit do
  local entry = redis.call('LPOP', KEYS[2])
  if not entry then break end
  local id, ms = string.match(entry, '^(.-)|(%d+)$')
  local run = prefix .. ':run:' .. id
  if redis.call('HGET', run, 'state') == 'queued' then
    redis.call('HSET', run, 'state', 'pending', 't:pending', ARGV[5])
    redis.call('ZADD', KEYS[4], ARGV[4], id)
    redis.call('SADD', KEYS[3], id)
    local member = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ms .. '|1|b|' .. id
    redis.call('ZADD', KEYS[5], ARGV[4], member)
    redis.call('ZADD', KEYS[6], ARGV[4], member)
    started[#started + 1] = id
  end
end
if redis.call('LLEN', KEYS[2]) == 0 and redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('SREM', KEYS[7], ARGV[2] .. '/' .. ARGV[6])
end
return started
"#;
static START_NEXT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{START_NEXT}")));

/// KEYS: the backfill, its line, its live runs, live runs, the shard's running backfills. ARGV:
/// prefix, now (RFC 3339), the set's member. Cancels every run of a running backfill not ended yet.
/// Returns (run id, its instance or '') of each run cancelled while under way, then -1 if the
/// backfill was not running.
const CANCEL: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return {'-1'} end
local prefix, now = ARGV[1], ARGV[2]
for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local run = prefix .. ':run:' .. string.match(entry, '^(.-)|')
  if redis.call('HGET', run, 'state') == 'queued' then
    redis.call('HSET', run, 'state', 'cancelled', 't:cancelled', now)
  end
end
local under_way = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local run = prefix .. ':run:' .. id
  if live_states[redis.call('HGET', run, 'state') or ''] then
    redis.call('HSET', run, 'state', 'cancelled', 't:cancelled', now)
    redis.call('ZREM', KEYS[4], id)
    under_way[#under_way + 1] = id
    under_way[#under_way + 1] = redis.call('HGET', run, 'instance_id') or ''
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('SREM', KEYS[5], ARGV[3])
return under_way
"#;
static CANCEL_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{CANCEL}")));

impl Store {
    fn backfill_key(&self, job_id: &str, id: &str, part: &str) -> String {
        self.owned_key(job_id, &format!("backfill:{id}{part}"))
    }

    /// Records a backfill of `job` at `instants` (in order, [`MAX_BACKFILL_RUNS`] at most): every run
    /// `queued` and marked with it, in one step, so a crash keeps all or none. Start it with
    /// [`Store::start_backfill_runs`].
    pub async fn create_backfill(
        &self,
        job: &Job,
        instants: &[DateTime<Utc>],
        range: (DateTime<Utc>, DateTime<Utc>),
        concurrency: u32,
    ) -> Result<String> {
        if instants.is_empty() || instants.len() > MAX_BACKFILL_RUNS {
            return Err(Error::internal("a backfill of no instants, or too many"));
        }
        let id = crate::ids::new_id();
        let now = Utc::now();
        let mut script = CREATE_SCRIPT.prepare_invoke();
        script
            .key(self.owned_key(&job.id, &format!("job:{}:runs", job.id)))
            .key(self.backfill_key(&job.id, &id, ""))
            .key(self.backfill_key(&job.id, &id, ":line"))
            .key(self.owned_key(&job.id, &format!("job:{}:backfills", job.id)))
            .key(self.owned_key(&job.id, ACTIVE))
            .arg(self.shards.prefix(self.shards.of(&job.id)))
            .arg(&id)
            .arg(&job.id)
            .arg(&job.account)
            .arg(now.to_rfc3339())
            .arg(now.timestamp_millis())
            .arg(concurrency)
            .arg(range.0.to_rfc3339())
            .arg(range.1.to_rfc3339())
            .arg(self.notify_events(job).unwrap_or_default());
        for instant in instants {
            script
                .arg(self.new_run_id(&job.id))
                .arg(instant.to_rfc3339())
                .arg(instant.timestamp_millis());
        }
        let mut conn = self.conn.clone();
        let _: u64 = script.invoke_async(&mut conn).await?;
        self.replicated(&job.id).await?;
        Ok(id)
    }

    /// Starts runs of the backfill until its `concurrency` are under way (called as one of its runs
    /// ends, and by the sweep); each is `pending` with its launch armed in the same step. Returns
    /// the runs started.
    pub async fn start_backfill_runs(&self, job: &Job, id: &str) -> Result<Vec<String>> {
        let now = Utc::now();
        let mut conn = self.conn.clone();
        let started: Vec<String> = START_NEXT_SCRIPT
            .key(self.backfill_key(&job.id, id, ""))
            .key(self.backfill_key(&job.id, id, ":line"))
            .key(self.backfill_key(&job.id, id, ":live"))
            .key(self.owned_key(&job.id, LIVE_RUNS))
            .key(self.owned_key(&job.id, super::delayed::DELAYED))
            .key(self.owned_key(&job.id, UNARMED))
            .key(self.owned_key(&job.id, ACTIVE))
            .arg(self.shards.prefix(self.shards.of(&job.id)))
            .arg(&job.id)
            .arg(job.generation)
            .arg(now.timestamp_millis())
            .arg(now.to_rfc3339())
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&job.id).await?;
        Ok(started)
    }

    /// Cancels a running backfill as a whole: its waiting runs and those under way. Returns the
    /// runs cancelled under way, with their instances (to be terminated); `None` if it was not
    /// running (done, cancelled, or unknown).
    pub async fn cancel_backfill(
        &self,
        job_id: &str,
        id: &str,
    ) -> Result<Option<Vec<(String, Option<String>)>>> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = CANCEL_SCRIPT
            .key(self.backfill_key(job_id, id, ""))
            .key(self.backfill_key(job_id, id, ":line"))
            .key(self.backfill_key(job_id, id, ":live"))
            .key(self.owned_key(job_id, LIVE_RUNS))
            .key(self.owned_key(job_id, ACTIVE))
            .arg(self.shards.prefix(self.shards.of(job_id)))
            .arg(Utc::now().to_rfc3339())
            .arg(format!("{job_id}/{id}"))
            .invoke_async(&mut conn)
            .await?;
        self.replicated(job_id).await?;
        if reply.first().map(String::as_str) == Some("-1") {
            return Ok(None);
        }
        Ok(Some(
            reply
                .chunks(2)
                .map(|pair| {
                    let instance = pair.get(1).filter(|id| !id.is_empty()).cloned();
                    (pair[0].clone(), instance)
                })
                .collect(),
        ))
    }

    /// One backfill of a job, if it has it.
    pub async fn get_backfill(&self, job_id: &str, id: &str) -> Result<Option<Backfill>> {
        let mut conn = self.conn.clone();
        let (fields, waiting, under_way): (BTreeMap<String, String>, u64, u64) = redis::pipe()
            .hgetall(self.backfill_key(job_id, id, ""))
            .llen(self.backfill_key(job_id, id, ":line"))
            .scard(self.backfill_key(job_id, id, ":live"))
            .query_async(&mut conn)
            .await?;
        if fields.get("job_id").map(String::as_str) != Some(job_id) {
            return Ok(None);
        }
        let time = |name: &str| -> Result<DateTime<Utc>> {
            parse_time(&optional(&fields, name).unwrap_or_default())
        };
        let number = |name: &str| optional(&fields, name).and_then(|v| v.parse().ok());
        Ok(Some(Backfill {
            id: id.to_string(),
            job_id: job_id.to_string(),
            from: time("from")?,
            to: time("to")?,
            total: number("total").unwrap_or(0),
            concurrency: number("concurrency").unwrap_or(1) as u32,
            state: optional(&fields, "state").unwrap_or_default(),
            created_at: time("created_at")?,
            waiting,
            under_way,
        }))
    }

    /// The job's backfills, newest first, `limit` at most.
    pub async fn job_backfills(&self, job_id: &str, limit: usize) -> Result<Vec<Backfill>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrevrange(
                self.owned_key(job_id, &format!("job:{job_id}:backfills")),
                0,
                limit.saturating_sub(1) as isize,
            )
            .await?;
        let mut backfills = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(backfill) = self.get_backfill(job_id, &id).await? {
                backfills.push(backfill);
            }
        }
        Ok(backfills)
    }

    /// `(job, backfill)` of every running backfill, in every shard (what the sweep walks).
    pub async fn running_backfills(&self) -> Result<Vec<(String, String)>> {
        let mut conn = self.conn.clone();
        let mut running = Vec::new();
        for shard in self.shards.all() {
            let members: Vec<String> = conn.smembers(self.shard_key(shard, ACTIVE)).await?;
            running.extend(members.into_iter().filter_map(|member| {
                member
                    .split_once('/')
                    .map(|(job, id)| (job.to_string(), id.to_string()))
            }));
        }
        Ok(running)
    }
}
