//! Array jobs (`runner.array_size`): a fire's run (the parent) makes N copies, each a run of its own
//! with its index, instance, retries and cost, started `array_parallelism` at a time; the parent's
//! state is derived from theirs once every copy has ended for good.
//!
//! Keys, under the job's shard prefix `p` (a copy's id is drawn in its job's shard):
//! - `p:run:{parent}:array`: index → the id of the copy's latest attempt
//! - `p:run:{parent}:array:runs`: every copy's run of every attempt (what trimming deletes)
//! - `p:run:{parent}:array:line`: copies not started yet, in index order
//! - `p:run:{parent}:array:live`: indexes started and not ended for good (an attempt under way, or
//!   a retry armed)
//! - `p:arrays`: `{job}/{parent}` of the shard's arrays under way, which the reaper's sweep walks so
//!   that a crash between a copy's end and the next step never stalls one
//!
//! The parent is counted in its own hash: `array:succeeded` and `array:failed` as indexes end.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::Utc;
use redis::{AsyncCommands, Script};

use super::notifications::{outbox_member, NOTE_EVENT_LUA, OUTBOX};
use super::runs::{run_from_hash, CancelledRun, FireRecord};
use super::scripts::{LIVE_RUNS, TRIM_ENDED_LUA, UNARMED};
use super::Store;
use crate::error::Result;
use crate::model::{Job, NotifyEvent, Run};

/// The shard's set of arrays under way.
const ACTIVE: &str = "arrays";

/// Copies recorded per expansion step: each step is one script, and Redis runs nothing else
/// meanwhile, so a fire of 10,000 copies is recorded in steps of a few milliseconds rather than
/// one of 150 (which would delay every other fire by as much).
const EXPAND_CHUNK: u32 = 500;

/// KEYS: the parent, its array, line, every copy, live runs, the shard's arrays, the notification
/// outbox. ARGV: prefix, parent id, job id, account, instant (RFC 3339), now (RFC 3339), now (ms),
/// parallelism, size, the `started` notification's member, the index the step starts at, then one
/// id per copy of the step.
///
/// Records the step's copies `queued` (their indexes from the parent's `array:recorded` on) if the
/// parent is still `pending` and has recorded exactly the copies before the step's first index
/// (another delivery may have gone on); the step that records the last copy moves the parent to
/// `running` (off the live runs: it has no launch of its own). Returns the copies recorded so far
/// (whichever delivery recorded them), or -1 if the parent is not pending (expanded before, or
/// cancelled).
const EXPAND: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return -1 end
local recorded = tonumber(redis.call('HGET', KEYS[1], 'array:recorded') or '0')
if recorded ~= tonumber(ARGV[11]) then return recorded end
local prefix, parent, size, now = ARGV[1], ARGV[2], tonumber(ARGV[9]), ARGV[6]
local overrides = redis.call('HGET', KEYS[1], 'overrides')
for i = 12, #ARGV do
  local id, index = ARGV[i], recorded + i - 12
  local run = prefix .. ':run:' .. id
  redis.call('HSET', run, 'id', id, 'job_id', ARGV[3], 'account', ARGV[4], 'attempt', '1',
    'scheduled_at', ARGV[5], 'state', 'queued', 't:queued', now, 'array_parent', parent,
    'array_index', index, 'array_size', size)
  if overrides then redis.call('HSET', run, 'overrides', overrides) end
  redis.call('HSET', KEYS[2], index, id)
  redis.call('RPUSH', KEYS[3], id)
  redis.call('SADD', KEYS[4], id)
end
recorded = recorded + #ARGV - 11
redis.call('HSET', KEYS[1], 'array:recorded', recorded, 'array_size', size)
if recorded >= size then
  redis.call('HSET', KEYS[1], 'state', 'running', 't:running', now, 'array_parallelism', ARGV[8])
  redis.call('ZREM', KEYS[5], parent)
  redis.call('SADD', KEYS[6], ARGV[3] .. '/' .. parent)
  note_event(KEYS[1], KEYS[7], ARGV[10], ARGV[7])
end
return recorded
"#;
static EXPAND_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{NOTE_EVENT_LUA}{EXPAND}")));

/// KEYS: the parent, its array, line, live indexes, live runs, delayed, unarmed. ARGV: prefix, job
/// id, generation, now (ms), now (RFC 3339), the fire's instant (ms), the index to settle ('' for
/// every index under way).
///
/// With the parent running: forgets the index (or each index) whose copy has ended for good (ended
/// with no retry waiting in `delayed`), counting each on the parent, then starts copies from the
/// line until `array_parallelism` indexes are under way, each `pending` with its launch armed, due
/// now.
/// Returns {'started', ids...}, or {'done', succeeded, failed} once nothing waits or runs.
///
/// With the parent ended (cancelled by a newer fire, say): cancels every copy not ended and every
/// retry not yet recorded. Returns {'ended', then (copy, its instance or '') of each copy cancelled
/// under way}.
const STEP: &str = r#"
local prefix = ARGV[1]
local function copy(id) return prefix .. ':run:' .. id end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  local out = {'ended'}
  for _, id in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if redis.call('HGET', copy(id), 'state') == 'queued' then
      redis.call('HSET', copy(id), 'state', 'cancelled', 't:cancelled', ARGV[5])
    end
  end
  for _, index in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local id = redis.call('HGET', KEYS[2], index)
    if id then
      local run = copy(id)
      if live_states[redis.call('HGET', run, 'state') or ''] then
        redis.call('HSET', run, 'state', 'cancelled', 't:cancelled', ARGV[5])
        redis.call('ZREM', KEYS[5], id)
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', run, 'instance_id') or ''
      end
      local retry = redis.call('HGET', run, 'retry')
      if retry then
        redis.call('ZREM', KEYS[6], retry)
        redis.call('ZREM', KEYS[7], retry)
      end
    end
  end
  redis.call('DEL', KEYS[3], KEYS[4])
  return out
end
-- A copy's end settles its own index (a step that costs the same whatever the parallelism); the
-- sweep, which may follow a lost step, settles them all.
local settle = {ARGV[7]}
if ARGV[7] == '' then settle = redis.call('SMEMBERS', KEYS[4]) end
for _, index in ipairs(settle) do
  local id = redis.call('HGET', KEYS[2], index)
  local state = id and redis.call('HGET', copy(id), 'state') or ''
  if redis.call('SISMEMBER', KEYS[4], index) == 1 and not live_states[state] then
    local retry = id and redis.call('HGET', copy(id), 'retry')
    if not (retry and redis.call('ZSCORE', KEYS[6], retry)) then
      redis.call('SREM', KEYS[4], index)
      if state == 'succeeded' then
        redis.call('HINCRBY', KEYS[1], 'array:succeeded', 1)
      else
        redis.call('HINCRBY', KEYS[1], 'array:failed', 1)
      end
    end
  end
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'array_parallelism') or '1')
local started = {'started'}
while redis.call('SCARD', KEYS[4]) < limit do
  local id = redis.call('LPOP', KEYS[3])
  if not id then break end
  local run = copy(id)
  if redis.call('HGET', run, 'state') == 'queued' then
    redis.call('HSET', run, 'state', 'pending', 't:pending', ARGV[5])
    redis.call('HDEL', run, 't:queued')
    redis.call('ZADD', KEYS[5], ARGV[4], id)
    redis.call('SADD', KEYS[4], redis.call('HGET', run, 'array_index'))
    local member = ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[6] .. '|1|b|' .. id
    redis.call('ZADD', KEYS[6], ARGV[4], member)
    redis.call('ZADD', KEYS[7], ARGV[4], member)
    started[#started + 1] = id
  end
end
if redis.call('LLEN', KEYS[3]) == 0 and redis.call('SCARD', KEYS[4]) == 0 then
  return {'done', redis.call('HGET', KEYS[1], 'array:succeeded') or '0',
    redis.call('HGET', KEYS[1], 'array:failed') or '0'}
end
return started
"#;
static STEP_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{STEP}")));

/// KEYS: the copy that ended, its parent, the array, the new copy, every copy, live runs. ARGV:
/// prefix, the ended copy's id, the new copy's id, now (RFC 3339), now (ms), its attempt, the
/// interruptions before it. Records the copy's next attempt once: the array's index moves to it in
/// the same step. Returns {0, new id}; {1, id} if recorded before; {2, ''} if there is nothing to
/// retry (the parent ended, the copy is under way, or another attempt followed it).
const RECORD_RETRY: &str = r#"
local index = redis.call('HGET', KEYS[1], 'array_index')
if not index then return {'2', ''} end
local current = redis.call('HGET', KEYS[3], index)
if current ~= ARGV[2] then
  if current and redis.call('HGET', ARGV[1] .. ':run:' .. current, 'previous_run') == ARGV[2] then
    return {'1', current}
  end
  return {'2', ''}
end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return {'2', ''} end
if unfinished(redis.call('HGET', KEYS[1], 'state') or '') then return {'2', ''} end
local ended = redis.call('HMGET', KEYS[1], 'job_id', 'account', 'scheduled_at', 'array_parent',
  'array_size', 'overrides')
redis.call('HSET', KEYS[4], 'id', ARGV[3], 'job_id', ended[1], 'account', ended[2], 'attempt', ARGV[6],
  'scheduled_at', ended[3], 'state', 'pending', 't:pending', ARGV[4], 'array_parent', ended[4],
  'array_index', index, 'array_size', ended[5], 'previous_run', ARGV[2])
if ended[6] then redis.call('HSET', KEYS[4], 'overrides', ended[6]) end
if ARGV[7] ~= '0' then redis.call('HSET', KEYS[4], 'interruptions', ARGV[7]) end
redis.call('HSET', KEYS[3], index, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[3])
return {'0', ARGV[3]}
"#;
static RECORD_RETRY_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{RECORD_RETRY}")));

/// See [`Store::array_leftovers`].
#[derive(Debug, Default)]
pub(super) struct ArrayLeftovers {
    pub copies: Vec<String>,
    pub keys: Vec<String>,
    pub sweep_entries: Vec<String>,
}

/// What one step of an array did ([`Store::step_array`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayStep {
    /// These copies were started now (maybe none: the array is at its parallelism).
    Started(Vec<String>),
    /// Every copy has ended for good: the parent is to end, succeeded only if `failed` is 0.
    Done { succeeded: u32, failed: u32 },
    /// The parent had ended: its copies not ended were cancelled (these under way, with their
    /// instances to terminate).
    Ended(Vec<CancelledRun>),
}

impl Store {
    fn array_key(&self, job_id: &str, parent: &str, part: &str) -> String {
        self.owned_key(job_id, &format!("run:{parent}:array{part}"))
    }

    /// Records the copies of array fire `parent` (`queued`, in index order), [`EXPAND_CHUNK`] a
    /// step, and moves it to `running` with the last, each copy once however many deliveries
    /// expand it at once or one after another a crash cut short: `true` if this call recorded the
    /// last copy, `false` if the fire was expanded before or is no longer pending. Start the copies
    /// with [`Store::step_array`].
    pub async fn expand_array(&self, job: &Job, parent: &Run) -> Result<bool> {
        let Some((size, parallelism)) = job.array() else {
            return Ok(false);
        };
        let mut from = 0;
        loop {
            let ids = size.saturating_sub(from).min(EXPAND_CHUNK);
            let recorded = self
                .expand_step(job, parent, (size, parallelism), from, ids)
                .await?;
            match u32::try_from(recorded) {
                Err(_) => return Ok(false),
                Ok(recorded) if recorded >= size => return Ok(recorded == from + ids),
                // Another delivery recorded more (or fewer) meanwhile: go on from there.
                Ok(recorded) => from = recorded,
            }
        }
    }

    /// One step of [`Store::expand_array`]: `ids` copies from index `from`; the copies recorded
    /// so far, or -1 if the fire is not pending. Public so that tests can cut an expansion short.
    pub async fn expand_step(
        &self,
        job: &Job,
        parent: &Run,
        (size, parallelism): (u32, u32),
        from: u32,
        ids: u32,
    ) -> Result<i64> {
        let now = Utc::now();
        let mut script = EXPAND_SCRIPT.prepare_invoke();
        script
            .key(self.owned_key(&job.id, &format!("run:{}", parent.id)))
            .key(self.array_key(&job.id, &parent.id, ""))
            .key(self.array_key(&job.id, &parent.id, ":line"))
            .key(self.array_key(&job.id, &parent.id, ":runs"))
            .key(self.owned_key(&job.id, LIVE_RUNS))
            .key(self.arrays_key(&job.id))
            .key(self.owned_key(&job.id, OUTBOX))
            .arg(self.shards.prefix(self.shards.of(&job.id)))
            .arg(&parent.id)
            .arg(&job.id)
            .arg(&job.account)
            .arg(parent.scheduled_at.to_rfc3339())
            .arg(now.to_rfc3339())
            .arg(now.timestamp_millis())
            .arg(parallelism)
            .arg(size)
            .arg(outbox_member(&parent.id, NotifyEvent::Started))
            .arg(from);
        for _ in 0..ids {
            script.arg(self.new_run_id(&job.id));
        }
        let mut conn = self.conn.clone();
        let recorded: i64 = script.invoke_async(&mut conn).await?;
        self.replicated(&job.id).await?;
        Ok(recorded)
    }

    /// One step of array fire `parent` of `job` (called as one of its copies ends, after it is
    /// expanded, and by the sweep): see [`ArrayStep`]. `settle` is the index whose copy ended, or
    /// `None` to look at every index under way (what the sweep does).
    pub async fn step_array(
        &self,
        job_id: &str,
        generation: u64,
        parent: &Run,
        settle: Option<u32>,
    ) -> Result<ArrayStep> {
        let now = Utc::now();
        let mut conn = self.conn.clone();
        let reply: Vec<String> = STEP_SCRIPT
            .key(self.owned_key(job_id, &format!("run:{}", parent.id)))
            .key(self.array_key(job_id, &parent.id, ""))
            .key(self.array_key(job_id, &parent.id, ":line"))
            .key(self.array_key(job_id, &parent.id, ":live"))
            .key(self.owned_key(job_id, LIVE_RUNS))
            .key(self.owned_key(job_id, super::delayed::DELAYED))
            .key(self.owned_key(job_id, UNARMED))
            .arg(self.shards.prefix(self.shards.of(job_id)))
            .arg(job_id)
            .arg(generation)
            .arg(now.timestamp_millis())
            .arg(now.to_rfc3339())
            .arg(parent.scheduled_at.timestamp_millis())
            .arg(settle.map_or_else(String::new, |index| index.to_string()))
            .invoke_async(&mut conn)
            .await?;
        self.replicated(job_id).await?;
        let (kind, rest) = match reply.split_first() {
            Some((kind, rest)) => (kind.as_str(), rest),
            None => ("", &[][..]),
        };
        let count = |i: usize| rest.get(i).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(match kind {
            "done" => ArrayStep::Done {
                succeeded: count(0),
                failed: count(1),
            },
            "ended" => ArrayStep::Ended(
                rest.chunks(2)
                    .map(|pair| CancelledRun {
                        run_id: pair[0].clone(),
                        instance_id: pair.get(1).filter(|id| !id.is_empty()).cloned(),
                    })
                    .collect(),
            ),
            _ => ArrayStep::Started(rest.to_vec()),
        })
    }

    /// Takes array fire `parent` of `job_id` off the sweep's set: called once it has ended.
    pub async fn forget_array(&self, job_id: &str, parent: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = conn
            .srem(self.arrays_key(job_id), format!("{job_id}/{parent}"))
            .await?;
        Ok(())
    }

    /// `(job, parent)` of every array under way, in every shard (what the sweep walks).
    pub async fn running_arrays(&self) -> Result<Vec<(String, String)>> {
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

    /// Records the next attempt (`attempt`) of array copy `ended` once, however often its retry is
    /// delivered: [`FireRecord::New`] the first time, [`FireRecord::Existing`] after, and
    /// [`FireRecord::Stale`] when there is nothing to retry (its parent ended meanwhile).
    pub async fn record_array_retry(
        &self,
        job: &Job,
        ended: &Run,
        attempt: u32,
        interruptions: u32,
    ) -> Result<FireRecord> {
        let Some(parent) = ended.array_parent() else {
            return Ok(FireRecord::Stale);
        };
        let id = self.new_run_id(&job.id);
        let now = Utc::now();
        let mut conn = self.conn.clone();
        let (status, run_id): (String, String) = RECORD_RETRY_SCRIPT
            .key(self.owned_key(&job.id, &format!("run:{}", ended.id)))
            .key(self.owned_key(&job.id, &format!("run:{parent}")))
            .key(self.array_key(&job.id, parent, ""))
            .key(self.owned_key(&job.id, &format!("run:{id}")))
            .key(self.array_key(&job.id, parent, ":runs"))
            .key(self.owned_key(&job.id, LIVE_RUNS))
            .arg(self.shards.prefix(self.shards.of(&job.id)))
            .arg(&ended.id)
            .arg(&id)
            .arg(now.to_rfc3339())
            .arg(now.timestamp_millis())
            .arg(attempt)
            .arg(interruptions)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&job.id).await?;
        Ok(match status.as_str() {
            "0" => FireRecord::New(run_id),
            "1" => FireRecord::Existing(run_id),
            _ => FireRecord::Stale,
        })
    }

    /// The copies of array fire `parent` of `job_id` from index `offset`, `limit` of them: each
    /// index's latest attempt, in index order.
    pub async fn array_copies(
        &self,
        job_id: &str,
        parent: &str,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let mut conn = self.conn.clone();
        let indexes: Vec<u32> = (offset..offset.saturating_add(limit)).collect();
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.array_key(job_id, parent, ""))
            .arg(&indexes)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = ids.into_iter().flatten().collect();
        let mut copies = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.owned_key(job_id, &format!("run:{id}")));
            }
            let maps: Vec<BTreeMap<String, String>> = pipe.query_async(&mut conn).await?;
            for map in maps.iter().filter(|map| !map.is_empty()) {
                match run_from_hash(map) {
                    Ok(run) => copies.push(run),
                    Err(err) => {
                        tracing::error!(parent, error = %err, "stored copy unreadable; left out")
                    }
                }
            }
        }
        Ok(copies)
    }

    /// What deleting a job deletes of the array fires among its `runs` besides the runs
    /// themselves: their copies, the keys of their arrays, and their entries in the sweep's set.
    pub(super) async fn array_leftovers(
        &self,
        job_id: &str,
        runs: &[String],
    ) -> Result<ArrayLeftovers> {
        if runs.is_empty() {
            return Ok(ArrayLeftovers::default());
        }
        let mut pipe = redis::pipe();
        for run in runs {
            pipe.smembers(self.array_key(job_id, run, ":runs"));
        }
        let mut conn = self.conn.clone();
        let copies: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        let mut leftovers = ArrayLeftovers::default();
        for (run, copies) in runs.iter().zip(&copies) {
            if !copies.is_empty() {
                leftovers.keys.extend(
                    ["", ":runs", ":line", ":live"].map(|part| self.array_key(job_id, run, part)),
                );
                leftovers.sweep_entries.push(format!("{job_id}/{run}"));
            }
        }
        leftovers.copies = copies.into_iter().flatten().collect();
        Ok(leftovers)
    }

    /// The shard's set of arrays under way, in `job_id`'s shard.
    pub(super) fn arrays_key(&self, job_id: &str) -> String {
        self.owned_key(job_id, ACTIVE)
    }
}
