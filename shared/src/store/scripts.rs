//! What the store's scripts share: the Lua functions several of them carry (a job's state read from
//! its record's head, trimming a job's ended runs, setting an unreadable job aside), the names of the
//! sets they touch, and what a fire does to its job's timer. Kept here so that the modules that own
//! each kind of record need not import one another.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

/// Reads a job's `enabled` and `generation` from the head of its JSON, where the store puts them
/// (decoded in full for a job stored before they were put there). Shared by the scripts that check
/// whether a fire is still wanted.
pub(super) const JOB_STATE_LUA: &str = r#"
local function job_state(raw)
  local enabled, generation = string.match(raw, '^{"enabled":(%a+),"generation":(%d+)')
  if enabled then return enabled == 'true', generation end
  local job = cjson.decode(raw)
  return job.enabled, tostring(job.generation)
end
"#;

/// Deletes a job's ended runs beyond the newest `keep`, skipping runs under way or waiting: a Lua function
/// shared by [`TRIM_RUNS`] and the light-fire script. Run keys are built from the prefix (their ids
/// are only known inside).
pub(super) const TRIM_ENDED_LUA: &str = r#"
-- A run's log is about to go: take its bytes off its account's history total.
local function forget_log(prefix, run)
  local bytes = redis.call('STRLEN', run .. ':log')
  if bytes == 0 then return end
  local account = redis.call('HGET', run, 'account')
  if account then redis.call('DECRBY', prefix .. ':quota:history:' .. account, bytes) end
end
-- A costed run is about to go: take its cost off its job's total (when the job has one).
local function forget_cost(prefix, run)
  local cost = redis.call('HGET', run, 'cost_nano_usd')
  if not cost then return end
  local total = prefix .. ':job:' .. (redis.call('HGET', run, 'job_id') or '') .. ':cost_nano_usd'
  if redis.call('EXISTS', total) == 1 then redis.call('DECRBY', total, cost) end
end
local live_states = {pending = true, provisioning = true, booting = true, running = true}
-- Not ended: under way, or waiting its turn (queued).
local function unfinished(state)
  return live_states[state] or state == 'queued'
end
-- An array fire's copies (every attempt) go with it, and the keys of its array.
local function forget_copies(prefix, run)
  for _, id in ipairs(redis.call('SMEMBERS', run .. ':array:runs')) do
    local copy = prefix .. ':run:' .. id
    forget_log(prefix, copy)
    forget_cost(prefix, copy)
    redis.call('DEL', copy, copy .. ':log')
  end
  redis.call('DEL', run .. ':array', run .. ':array:runs', run .. ':array:line', run .. ':array:live')
end
local function trim_ended(runs, prefix, keep)
  local excess = redis.call('ZCARD', runs) - keep
  if excess <= 0 then return 0 end
  local deleted = 0
  for _, old in ipairs(redis.call('ZRANGE', runs, 0, excess - 1)) do
    local run = prefix .. ':run:' .. old
    if not unfinished(redis.call('HGET', run, 'state') or '') then
      forget_log(prefix, run)
      forget_cost(prefix, run)
      if redis.call('HEXISTS', run, 'array_size') == 1 then forget_copies(prefix, run) end
      redis.call('DEL', run, run .. ':log')
      redis.call('ZREM', runs, old)
      deleted = deleted + 1
    end
  end
  return deleted
end
"#;

/// Lua shared by the scripts that find an unreadable job: sets `job_id` aside in the quarantine hash
/// `key` with `reason`, taking its timer (if any, near or far) off and keeping its instant. Needs
/// `far_timers::TIMER_LUA` before it.
pub(super) const QUARANTINE_LUA: &str = r#"
local function quarantine(key, timers, job_id, reason, now)
  local score = timer_at(timers, job_id)
  drop_timer(timers, job_id)
  local record = {reason = reason, at = now}
  if score then record.timer_ms = tonumber(score) end
  redis.call('HSET', key, job_id, cjson.encode(record))
end
"#;

/// The sorted set of runs not yet ended, scored by when they were recorded: what the stuck-run sweep
/// walks. A hint kept up by the scripts that create and end runs; the sweep drops what has ended.
pub(super) const LIVE_RUNS: &str = "runs:live";

/// How long a fire's marker (`fire:{job}:{ms}:{attempt}` → run id) outlives the fire: long past any
/// redelivery of its timer.
pub(super) const FIRE_MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// The sorted set of timers not yet handed to RabbitMQ: member `{job_id}|{generation}`, score the due
/// instant in milliseconds. A scheduled fire is in it only once it is near: see [`ARM_LUA`].
pub(super) const UNARMED: &str = "timers:unarmed";

/// Lua shared by the scripts that set a job's timer: `arm(unarmed, score, member)` puts the fire in
/// `timers:unarmed` only if it is due by `timers:unarmed:until`, the instant up to which the pump has
/// taken the timers of `timers` over (see [`super::timers`]). A later fire stays in `timers` alone,
/// where the pump finds it when it comes near: a job waiting for next month costs one sorted-set
/// entry less. Before any pump has run (no `until` yet) every fire goes in, as it always did.
pub(super) const ARM_LUA: &str = r#"
local function arm(unarmed, score, member)
  local armed_until = redis.call('GET', unarmed .. ':until')
  if not armed_until or tonumber(score) <= tonumber(armed_until) then
    redis.call('ZADD', unarmed, score, member)
  end
end
"#;

/// Score, member pairs (or key, value pairs) a script hands one variadic command at most: two
/// values each, well within the 8,000 Lua's `unpack` may put on its stack. Callers cut longer
/// lists into calls of this many.
pub(super) const PAIRS_PER_CALL: usize = 1_000;

/// [`ARM_LUA`] for many fires of one shard at once: `arm_many(unarmed, scored)` with score, member
/// pairs; one read of the bound and one `ZADD` for all. Returns how many it put in.
pub(super) const ARM_MANY_LUA: &str = r#"
local function arm_many(unarmed, scored)
  local armed_until = redis.call('GET', unarmed .. ':until')
  local near = {}
  for i = 1, #scored, 2 do
    if not armed_until or tonumber(scored[i]) <= tonumber(armed_until) then
      near[#near + 1] = scored[i]
      near[#near + 1] = scored[i + 1]
    end
  end
  if #near > 0 then redis.call('ZADD', unarmed, unpack(near)) end
  return #near / 2
end
"#;

/// [`ARM_MANY_LUA`] as a script of its own, for the transactions that save jobs (`EVAL` inside
/// `MULTI`). KEYS: the unarmed set. ARGV: score, member pairs.
pub(super) static ARM_MANY: LazyLock<String> =
    LazyLock::new(|| format!("{ARM_MANY_LUA}return arm_many(KEYS[1], ARGV)"));

pub(super) fn unarmed_member(job_id: &str, generation: u64) -> String {
    format!("{job_id}|{generation}")
}

/// What a fire does to its job's timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMove {
    /// Leave it (a manual run or a retry does not move the schedule).
    Leave,
    /// Move it from the fire's instant to the next (or clear it: `None`), unless it was moved already.
    Advance(Option<DateTime<Utc>>),
}

impl TimerMove {
    /// As the fire scripts take it: '' leave, '-' clear, else the next fire in ms.
    pub(super) fn as_arg(&self) -> String {
        match self {
            TimerMove::Leave => String::new(),
            TimerMove::Advance(None) => "-".to_string(),
            TimerMove::Advance(Some(next)) => next.timestamp_millis().to_string(),
        }
    }
}
