//! Runs: recording a fire once as a run, reading runs back, trimming a job's history, and the
//! capped container output.
//!
//! Keys, under the prefix `p` of the job's shard ([`super::shards`]; a run's id is drawn there):
//! - `p:fire:{job}:{ms}:{attempt}`: the run recorded for that fire, so a fire is recorded once
//! - `p:run:{id}`: the run as a hash (its state moves only by compare-and-set); `p:job:{id}:runs` the
//!   job's runs scored by creation time
//! - `p:run:{id}:log`: the container output, capped (a light run keeps its output in its hash);
//!   `p:quota:history:{account}` the bytes of every kept run's log of the account in the shard
//! - `p:runs:live`: runs not yet ended, scored by creation time (the stuck-run sweep walks it)

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::far_timers::TIMER_LUA;
use super::scripts::{
    TimerMove, ARM_LUA, FIRE_MARKER_TTL_SECS, JOB_STATE_LUA, LIVE_RUNS, TRIM_ENDED_LUA, UNARMED,
};
use super::{optional, parse_time, required, state_time_field, transitions, Moved, Store};
use crate::error::{Error, Result};
use crate::ids::is_id;
use crate::model::{ArrayPart, Job, Run, RunOverrides, RunState};

/// Runs read per pipeline when a page of a job's runs is read.
const RUN_READ_CHUNK: usize = 500;

/// What recording a fire found.
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
    /// The fire came later than the job's misfire grace: not recorded (the timer moved on).
    Misfired,
    /// The job's `max_runs` scheduled fires were made before this one: not recorded, the timer
    /// cleared (the schedule is over).
    Finished,
    /// A run of the job is under way (`concurrency: queue` or `queue_all`): the fire's run waits,
    /// `queued`, until the runs before it end.
    Queued(String),
    /// As many fires wait already as the policy allows: not recorded.
    QueueFull,
}

/// One fire to record, with what it does to its job's timer and what its misfire policy decided,
/// all of which [`Store::record_fire_step`] applies in one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireStep {
    pub generation: u64,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    /// Attempts of this instant before this one that spot interruptions ended.
    pub interruptions: u32,
    /// A scheduled fire moves its job's timer on; a retry or a run-now leaves it.
    pub timer: TimerMove,
    /// The misfire policy found the fire too late: it is skipped unless it was recorded before.
    pub too_late: bool,
}

impl FireStep {
    /// A fire that leaves the timer alone and is never too late (a retry, a run-now, a test's).
    pub fn leaving_timer(generation: u64, scheduled_at: DateTime<Utc>, attempt: u32) -> FireStep {
        FireStep {
            generation,
            scheduled_at,
            attempt,
            interruptions: 0,
            timer: TimerMove::Leave,
            too_late: false,
        }
    }
}

/// Records a fire once, moving its job's timer on and deciding its misfire and concurrency policies
/// in the same step, so that no crash or lost message can leave a fire half-done: either nothing
/// happened (the timer still points at the instant, for the reconciler to re-arm) or the run is
/// recorded (or the skip decided) and the timer moved on.
///
/// KEYS: fire marker, run hash, job runs, job, live runs, timers, unarmed, the job's count of
/// scheduled fires, the fire's overrides (a run-now's, copied onto the run of every attempt), the
/// job's queue of waiting fires, the shard's set of jobs with a queue. ARGV: run id, generation,
/// score, marker TTL (seconds), policy (`allow`, `forbid`, `replace`, `queue`, `queue_all`), key
/// prefix, now (RFC 3339), timer move ('' leave, '-' clear, else the next fire in ms), the fire's
/// instant (ms), job id, '1' if the misfire policy skips the fire, `max_runs` ('' for none), the
/// most fires that may wait (0 when none do), then the run's field/value pairs. Returns {status,
/// run id, then (cancelled run, its instance or '') pairs}: status 0 new, 1 recorded before (its
/// run, and nothing cancelled: a duplicate never cancels its own fire's run), 2 stale, 3 forbidden
/// (a run of the job is under way), 4 the timer moved past this scheduled fire (fired before), 5
/// misfired, 6 the job's `max_runs` fires were made already (its timer cleared), 7 the queue is
/// full (skipped), 8 queued (its run waits in state `queued`).
///
/// `max_runs` counts a scheduled fire when it is recorded, in this step, so a redelivery (which finds
/// the marker) never counts twice; the fire that reaches the count clears the timer, so the schedule
/// ends there whatever else is in flight.
const RECORD_FIRE: &str = r#"
local move = ARGV[8]
local limit = tonumber(ARGV[12])
-- Takes the job's timer off, and its fire off the unarmed set.
local function clear_timer(generation)
  redis.call('ZREM', KEYS[6], ARGV[10])
  redis.call('ZREM', KEYS[7], ARGV[10] .. '|' .. generation)
end
-- Moves the job's timer on from this fire's instant; false if it no longer points there.
local function move_timer(generation)
  local score = redis.call('ZSCORE', KEYS[6], ARGV[10])
  if not score or tonumber(score) ~= tonumber(ARGV[9]) then return false end
  if move == '-' then
    redis.call('ZREM', KEYS[6], ARGV[10])
  else
    put_timer(KEYS[6], ARGV[10], move, generation, 'near')
    -- the member as `unarmed_member` names it
    arm(KEYS[7], move, ARGV[10] .. '|' .. generation)
  end
  return true
end
local raw = redis.call('GET', KEYS[4])
local enabled, generation = false, nil
if raw then enabled, generation = job_state(raw) end
local current = enabled and generation == ARGV[2]
local existing = redis.call('GET', KEYS[1])
if existing then
  -- Recorded before; a timer put back on this instant since (a save that rewrote it) moves on
  -- again, or the reconciler would hand this fire over for ever.
  if current and move ~= '' then move_timer(generation) end
  return {'1', existing}
end
if not current then return {'2', ''} end
if move ~= '' and limit and tonumber(redis.call('GET', KEYS[8]) or '0') >= limit then
  local score = redis.call('ZSCORE', KEYS[6], ARGV[10])
  if score and tonumber(score) == tonumber(ARGV[9]) then clear_timer(generation) end
  return {'6', ''}
end
if move ~= '' and not move_timer(generation) then return {'4', ''} end
if ARGV[11] == '1' then return {'5', ''} end
local policy, prefix, now = ARGV[5], ARGV[6], ARGV[7]
local queue_bound = tonumber(ARGV[13])
local cancelled = {}
-- Under queue and queue_all a fire waits while a run is under way or fires wait before it.
local waits = queue_bound > 0 and redis.call('LLEN', KEYS[10]) > 0
if policy ~= 'allow' and not waits then
  for _, id in ipairs(redis.call('ZREVRANGE', KEYS[3], 0, 199)) do
    local run = prefix .. ':run:' .. id
    if live_states[redis.call('HGET', run, 'state') or ''] then
      if policy == 'forbid' then return {'3', id} end
      if queue_bound > 0 then
        waits = true
        break
      end
      redis.call('HSET', run, 'state', 'cancelled', 't:cancelled', now)
      redis.call('ZREM', KEYS[5], id)
      cancelled[#cancelled + 1] = id
      cancelled[#cancelled + 1] = redis.call('HGET', run, 'instance_id') or ''
    end
  end
end
-- The bound holds scheduled fires back; a retry or a run-now always gets in line.
if waits and move ~= '' and redis.call('LLEN', KEYS[10]) >= queue_bound then return {'7', ''} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('HSET', KEYS[2], unpack(ARGV, 14))
-- Only a run-now (and its retries) has overrides: a scheduled fire reads none.
if move == '' then
  local overrides = redis.call('GET', KEYS[9])
  if overrides then redis.call('HSET', KEYS[2], 'overrides', overrides) end
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if move ~= '' and limit and redis.call('INCR', KEYS[8]) >= limit then clear_timer(generation) end
if waits then
  redis.call('HSET', KEYS[2], 'state', 'queued', 't:queued', now)
  redis.call('HDEL', KEYS[2], 't:pending')
  redis.call('RPUSH', KEYS[10], ARGV[1])
  redis.call('SADD', KEYS[11], ARGV[10])
  return {'8', ARGV[1]}
end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
local out = {'0', ARGV[1]}
for _, value in ipairs(cancelled) do out[#out + 1] = value end
return out
"#;

/// What recording a fire did: the record, and the runs its `replace` policy cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFire {
    pub record: FireRecord,
    pub cancelled: Vec<CancelledRun>,
}

/// A run cancelled by a newer fire under `replace`; its instance, if any, is to be terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledRun {
    pub run_id: String,
    pub instance_id: Option<String>,
}

/// KEYS[1] the job's runs; ARGV[1] key prefix, ARGV[2] runs to keep.
const TRIM_RUNS: &str = r#"return trim_ended(KEYS[1], ARGV[1], tonumber(ARGV[2]))"#;

static TRIM_RUNS_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{TRIM_RUNS}")));

/// Appends to a run's log, within its cap and its account's history quota. KEYS[1] the log, KEYS[2]
/// the account's history bytes, KEYS[3] the run; ARGV[1] chunk, ARGV[2] the run's cap, ARGV[3] the
/// account's. Returns the log's length and 1 the first time the account's quota cut the run's output.
const APPEND_CAPPED: &str = r#"
local len = redis.call('STRLEN', KEYS[1])
local room = tonumber(ARGV[2]) - len
local account_room = tonumber(ARGV[3]) - tonumber(redis.call('GET', KEYS[2]) or '0')
local chunk = ARGV[1]
local cut_by_account = account_room < room and #chunk > account_room
if account_room < room then room = account_room end
local first_cut = 0
if cut_by_account then first_cut = redis.call('HSETNX', KEYS[3], 'history_cut', '1') end
if room <= 0 then return {len, first_cut} end
if #chunk > room then chunk = string.sub(chunk, 1, room) end
if #chunk > 0 then
  len = redis.call('APPEND', KEYS[1], chunk)
  redis.call('INCRBY', KEYS[2], #chunk)
end
return {len, first_cut}
"#;

static RECORD_FIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{JOB_STATE_LUA}{TIMER_LUA}{ARM_LUA}{TRIM_ENDED_LUA}{RECORD_FIRE}"
    ))
});
static APPEND_CAPPED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_CAPPED));

impl Store {
    /// Records the fire of `job` at `scheduled_at` (its `attempt`) exactly once, creating its run in
    /// `pending`, and leaves the job's timer alone (a retry's or a run-now's record; see
    /// [`Store::record_fire_step`] for everything a fire decides in that step).
    pub async fn record_fire_deciding(
        &self,
        job: &Job,
        generation: u64,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
    ) -> Result<RecordedFire> {
        self.record_fire_step(
            job,
            &FireStep::leaving_timer(generation, scheduled_at, attempt),
        )
        .await
    }

    /// Records a fire exactly once, creating its run in `pending`, in one script with everything the
    /// fire decides, so no two fires, provisioners or deliveries can race it, and no crash or lost
    /// message between two steps can lose it:
    /// - a scheduled fire moves its job's timer on ([`FireStep::timer`]), and is
    ///   [`FireRecord::Passed`] if the timer has moved past it without a run (fired before);
    /// - a fire the misfire policy found too late is [`FireRecord::Misfired`], the timer moved on;
    /// - under `forbid` the fire is [`FireRecord::Forbidden`] while a run is under way; under
    ///   `replace` the runs under way are cancelled (returned, for their instances to be
    ///   terminated). Retries obey it too.
    pub async fn record_fire_step(&self, job: &Job, step: &FireStep) -> Result<RecordedFire> {
        let (generation, scheduled_at, attempt) =
            (step.generation, step.scheduled_at, step.attempt);
        let mut conn = self.conn.clone();
        let run_id = self.new_run_id(&job.id);
        let now = Utc::now();
        let mut fields = vec![
            ("id", run_id.clone()),
            ("job_id", job.id.clone()),
            ("account", job.account.clone()),
            ("attempt", attempt.to_string()),
            ("scheduled_at", scheduled_at.to_rfc3339()),
            ("state", RunState::Pending.to_string()),
        ];
        if step.interruptions > 0 {
            fields.push(("interruptions", step.interruptions.to_string()));
        }
        if let Some(events) = self.notify_events(job) {
            fields.push(("notify", events));
        }
        if let Some((size, _)) = job.array() {
            fields.push(("array_size", size.to_string()));
        }
        let pending_at = (state_time_field(RunState::Pending), now.to_rfc3339());
        let policy = job.policies.concurrency.as_str();
        let mut script = RECORD_FIRE_SCRIPT.prepare_invoke();
        script
            .key(self.fire_key(&job.id, scheduled_at, attempt))
            .key(self.owned_key(&job.id, &format!("run:{run_id}")))
            .key(self.owned_key(&job.id, &format!("job:{}:runs", job.id)))
            .key(self.owned_key(&job.id, &format!("job:{}", job.id)))
            .key(self.owned_key(&job.id, LIVE_RUNS))
            .key(self.owned_key(&job.id, "timers"))
            .key(self.owned_key(&job.id, UNARMED))
            .key(self.owned_key(&job.id, &super::finite::fired_key(&job.id)))
            .key(self.overrides_key(&job.id, scheduled_at))
            .key(self.owned_key(&job.id, &super::queues::queue_key(&job.id)))
            .key(self.owned_key(&job.id, super::queues::QUEUES))
            .arg(&run_id)
            .arg(generation)
            .arg(now.timestamp_millis())
            .arg(FIRE_MARKER_TTL_SECS)
            .arg(policy)
            .arg(self.shards.prefix(self.shards.of(&job.id)))
            .arg(now.to_rfc3339())
            .arg(step.timer.as_arg())
            .arg(scheduled_at.timestamp_millis())
            .arg(&job.id)
            .arg(if step.too_late { "1" } else { "0" })
            .arg(
                job.policies
                    .max_runs
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            )
            .arg(
                job.policies
                    .concurrency
                    .queue_bound(job.policies.max_queued),
            );
        for (field, value) in &fields {
            script.arg(*field).arg(value);
        }
        script.arg(&pending_at.0).arg(&pending_at.1);
        let reply: Vec<String> = script.invoke_async(&mut conn).await?;
        self.replicated(&job.id).await?;
        let status = reply.first().map(String::as_str).unwrap_or("");
        let id = reply.get(1).cloned().unwrap_or_default();
        let record = match status {
            "0" => FireRecord::New(id),
            "1" => FireRecord::Existing(id),
            "3" => FireRecord::Forbidden(id),
            "4" => FireRecord::Passed,
            "5" => FireRecord::Misfired,
            "6" => FireRecord::Finished,
            "7" => FireRecord::QueueFull,
            "8" => FireRecord::Queued(id),
            _ => FireRecord::Stale,
        };
        let cancelled = reply
            .get(2..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|pair| match pair {
                [run_id, instance_id] => Some(CancelledRun {
                    run_id: run_id.clone(),
                    instance_id: Some(instance_id.clone()).filter(|id| !id.is_empty()),
                }),
                _ => None,
            })
            .collect();
        Ok(RecordedFire { record, cancelled })
    }

    /// [`Store::record_fire_deciding`] for callers that need only what became of the fire.
    pub async fn record_fire(
        &self,
        job: &Job,
        generation: u64,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
    ) -> Result<FireRecord> {
        Ok(self
            .record_fire_deciding(job, generation, scheduled_at, attempt)
            .await?
            .record)
    }

    pub(super) fn fire_key(
        &self,
        job_id: &str,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
    ) -> String {
        self.owned_key(
            job_id,
            &format!(
                "fire:{job_id}:{}:{attempt}",
                scheduled_at.timestamp_millis()
            ),
        )
    }

    /// Where a run-now's overrides wait for its fire to be recorded: keyed by the job and instant, so
    /// that every attempt of that instant runs with them.
    fn overrides_key(&self, job_id: &str, scheduled_at: DateTime<Utc>) -> String {
        self.owned_key(
            job_id,
            &format!(
                "fire:{job_id}:{}:overrides",
                scheduled_at.timestamp_millis()
            ),
        )
    }

    /// Keeps `overrides` for the fire of `job_id` at `scheduled_at` (a run-now's), for as long as
    /// the fire's marker: the script that records the fire copies them onto its run.
    pub async fn set_fire_overrides(
        &self,
        job_id: &str,
        scheduled_at: DateTime<Utc>,
        overrides: &RunOverrides,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = conn
            .set_ex(
                self.overrides_key(job_id, scheduled_at),
                serde_json::to_string(overrides)?,
                FIRE_MARKER_TTL_SECS,
            )
            .await?;
        self.replicated(job_id).await
    }

    /// The run recorded for a fire, if it was recorded.
    pub async fn fire_run(
        &self,
        job_id: &str,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
    ) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn
            .get(self.fire_key(job_id, scheduled_at, attempt))
            .await?)
    }

    /// Deletes the job's ended runs beyond its newest `keep`, with their logs. A run still under way
    /// (pending, provisioning, booting, running) is never deleted, however old: it keeps its record,
    /// its instance and its log until it ends, and a later trim takes it then.
    pub async fn trim_runs(&self, job_id: &str, keep: usize) -> Result<usize> {
        let mut conn = self.conn.clone();
        let deleted: usize = TRIM_RUNS_SCRIPT
            .key(self.owned_key(job_id, &format!("job:{job_id}:runs")))
            .arg(self.shards.prefix(self.shards.of(job_id)))
            .arg(keep)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted)
    }

    /// A job's newest `limit` runs, newest first, for listings: a run that cannot be read back is
    /// logged and left out rather than failing the listing.
    pub async fn job_runs(&self, job_id: &str, limit: usize) -> Result<Vec<Run>> {
        self.job_runs_from(job_id, 0, limit).await
    }

    /// A page of a job's runs, newest first: `limit` of them after the first `offset`, read in
    /// pipelines of [`RUN_READ_CHUNK`] (a job's runs are all in its shard).
    pub async fn job_runs_from(
        &self,
        job_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Run>> {
        let ids = self.job_run_ids_from(job_id, offset, limit).await?;
        let mut runs = Vec::with_capacity(ids.len());
        // Bounded pipelines: a history of 10,000 runs is not one reply in memory at once.
        for chunk in ids.chunks(RUN_READ_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.owned_key(id, &format!("run:{id}")));
            }
            let mut conn = self.conn.clone();
            let maps: Vec<BTreeMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (id, map) in chunk.iter().zip(maps) {
                if map.is_empty() {
                    // Trimmed between the two reads.
                    continue;
                }
                match run_from_hash(&map) {
                    Ok(run) => runs.push(run),
                    Err(err) => {
                        tracing::error!(run_id = %id, error = %err, "stored run unreadable; left out");
                    }
                }
            }
        }
        Ok(runs)
    }

    pub async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        if !is_id(id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let map: BTreeMap<String, String> = conn
            .hgetall(self.owned_key(id, &format!("run:{id}")))
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        run_from_hash(&map).map(Some)
    }

    /// A job's run ids, newest first.
    pub async fn job_run_ids(&self, job_id: &str, limit: usize) -> Result<Vec<String>> {
        self.job_run_ids_from(job_id, 0, limit).await
    }

    async fn job_run_ids_from(
        &self,
        job_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>> {
        if !is_id(job_id) {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let start = offset as isize;
        let stop = if limit == 0 {
            -1
        } else {
            start + limit as isize - 1
        };
        Ok(conn
            .zrevrange(
                self.owned_key(job_id, &format!("job:{job_id}:runs")),
                start,
                stop,
            )
            .await?)
    }

    /// The newest run of a job (one that cannot be read back counts as none).
    pub async fn latest_run(&self, job_id: &str) -> Result<Option<Run>> {
        Ok(self.job_runs(job_id, 1).await?.into_iter().next())
    }

    /// Moves a run to `to` (timestamped) and sets `fields`, if the move is legal from where it is.
    pub async fn advance_run(
        &self,
        id: &str,
        to: RunState,
        fields: &[(&str, String)],
    ) -> Result<Moved<RunState>> {
        self.end_run(id, to, fields, None, None).await
    }

    /// Sets fields of a run without changing its state.
    pub async fn set_run_fields(&self, id: &str, fields: &[(&str, String)]) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.owned_key(id, &format!("run:{id}"));
        let _: () = conn.hset_multiple(key, fields).await?;
        Ok(())
    }

    /// Appends to the run's output, at most `run_cap` bytes in all and no more than its account's
    /// history quota (`account_cap` bytes over every kept run) allows; the first cut by the quota is
    /// counted as a refusal. Returns the output's length. With shards, the run's shard counts its
    /// own bytes and the cap it checks is what the other shards leave (read just before: two
    /// appends in two shards at once may overshoot the account's quota by a chunk).
    pub async fn append_log(
        &self,
        run: &Run,
        chunk: &[u8],
        run_cap: usize,
        account_cap: u64,
    ) -> Result<usize> {
        let shard = self.shards.of(&run.id);
        let elsewhere = match self.shards.count() {
            1 => 0,
            _ => {
                let per_shard = self.history_bytes_per_shard(&run.account).await?;
                per_shard.iter().sum::<u64>() - per_shard[usize::from(shard)]
            }
        };
        let mut conn = self.conn.clone();
        let (len, first_cut): (usize, i64) = APPEND_CAPPED_SCRIPT
            .key(self.shard_key(shard, &format!("run:{}:log", run.id)))
            .key(self.history_bytes_key(shard, &run.account))
            .key(self.shard_key(shard, &format!("run:{}", run.id)))
            .arg(chunk)
            .arg(run_cap)
            .arg(account_cap.saturating_sub(elsewhere))
            .invoke_async(&mut conn)
            .await?;
        if first_cut == 1 {
            tracing::warn!(run_id = %run.id, account = %run.account, "output cut: the account's history is full");
            self.note_quota_refusal("max_history_bytes", &run.account)
                .await;
        }
        Ok(len)
    }

    /// Where the bytes of an account's kept output in `shard` are counted (beside its runs, so
    /// that trimming them takes their bytes off in the same script).
    pub(super) fn history_bytes_key(&self, shard: u16, account: &str) -> String {
        self.shard_key(shard, &format!("quota:history:{account}"))
    }

    /// The bytes of output the account's kept runs hold, in every shard.
    pub async fn history_bytes(&self, account: &str) -> Result<u64> {
        Ok(self.history_bytes_per_shard(account).await?.iter().sum())
    }

    async fn history_bytes_per_shard(&self, account: &str) -> Result<Vec<u64>> {
        self.on_every_shard(|shard| async move {
            let mut conn = self.conn.clone();
            let bytes: Option<i64> = conn.get(self.history_bytes_key(shard, account)).await?;
            Ok(bytes.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    /// A run's output from byte `offset` on (what a follower has not had yet): a range of the log,
    /// never the whole of it again.
    pub async fn log_since(&self, run_id: &str, offset: usize) -> Result<Vec<u8>> {
        if !is_id(run_id) {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let key = self.owned_key(run_id, &format!("run:{run_id}:log"));
        let bytes: Vec<u8> = redis::cmd("GETRANGE")
            .arg(&key)
            .arg(offset)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        Ok(bytes)
    }

    /// A run's output: its log, or for a light run the output kept in its hash.
    pub async fn get_log(&self, run_id: &str) -> Result<Vec<u8>> {
        if !is_id(run_id) {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let (log, output): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::pipe()
            .get(self.owned_key(run_id, &format!("run:{run_id}:log")))
            .hget(self.owned_key(run_id, &format!("run:{run_id}")), "output")
            .query_async(&mut conn)
            .await?;
        Ok(log.or(output).unwrap_or_default())
    }
}

/// The run's place in an array job, from its hash: a copy names its parent and index, the parent
/// counts its copies' endings (see [`super::arrays`]).
fn array_part(map: &BTreeMap<String, String>) -> Option<ArrayPart> {
    let number = |field: &str| optional(map, field).and_then(|v| v.parse::<u32>().ok());
    let array_size = number("array_size")?;
    Some(
        match (optional(map, "array_parent"), number("array_index")) {
            (Some(array_parent), Some(array_index)) => ArrayPart::Child {
                array_size,
                array_index,
                array_parent,
            },
            _ => ArrayPart::Parent {
                array_size,
                array_succeeded: number("array:succeeded").unwrap_or(0),
                array_failed: number("array:failed").unwrap_or(0),
            },
        },
    )
}

pub(super) fn run_from_hash(map: &BTreeMap<String, String>) -> Result<Run> {
    Ok(Run {
        id: required(map, "id")?.clone(),
        job_id: required(map, "job_id")?.clone(),
        account: required(map, "account")?.clone(),
        attempt: required(map, "attempt")?
            .parse()
            .map_err(|_| Error::internal("bad stored attempt"))?,
        scheduled_at: parse_time(required(map, "scheduled_at")?)?,
        state: required(map, "state")?.parse()?,
        transitions: transitions(map),
        instance_id: optional(map, "instance_id"),
        container_id: optional(map, "container_id"),
        exit_code: optional(map, "exit_code").and_then(|v| v.parse().ok()),
        error: optional(map, "error"),
        heartbeat_at: optional(map, "heartbeat_at").and_then(|v| parse_time(&v).ok()),
        meta: optional(map, "meta"),
        callback_status: optional(map, "callback_status"),
        launch_errors: optional(map, "launch_errors"),
        relaunches: optional(map, "relaunches")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        relaunch_reasons: optional(map, "relaunch_reasons")
            .map(|reasons| reasons.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        relaunch_at: optional(map, "relaunch_at").and_then(|v| parse_time(&v).ok()),
        overrides: optional(map, "overrides").and_then(|v| serde_json::from_str(&v).ok()),
        backfill: optional(map, "backfill"),
        late_alert_at: optional(map, "alert:late").and_then(|v| parse_time(&v).ok()),
        long_running_alert_at: optional(map, "alert:long_running")
            .and_then(|v| parse_time(&v).ok()),
        interruptions: optional(map, "interruptions")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        cost_usd: optional(map, "cost_nano_usd")
            .and_then(|v| v.parse::<u64>().ok())
            .map(crate::pricing::usd),
        secret_hash: optional(map, "secret_hash").unwrap_or_default(),
        array: array_part(map),
        previous_run: optional(map, "previous_run"),
        notifications: optional(map, "notifications")
            .map(|lines| {
                lines
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect()
            })
            .unwrap_or_default(),
    })
}
