//! Far timers: job timers due after the promoter's horizon, parked in small hashes instead of
//! `timers`.
//!
//! A member of the sorted set `timers` costs Redis about 144 bytes (a skiplist node, a dict entry,
//! the id). Most pending jobs of a large deployment wait days or months, and nothing reads their
//! timers by time until they come near. So, per shard `p`:
//! - `p:timers:far:until`: the instant (ms) up to which every timer is in `timers`. Set by the
//!   promoter only; before any promoter ran there is none and every timer goes in `timers`, as it
//!   always did (so a deployment mid-upgrade parks nothing until a new provisioner runs).
//! - `p:timers:far:{xy}`: a hash of the timers due later, where `xy` is the id's last two
//!   characters (ids are random alphanumerics: 62² = 3,844 buckets, evenly filled). Each maps `id`
//!   to one integer, the instant (ms) followed by the last six digits of the job's generation,
//!   which a listpack keeps in 8 bytes where the text `{ms}|{generation}` took 16. Under Redis's
//!   `hash-max-listpack-entries` (512) a bucket is a listpack, about 45 bytes an entry: up to two
//!   million parked timers a shard before buckets grow into hash tables (still correct, ~100 bytes
//!   a timer).
//! - `p:timers:far`: the buckets scored by their earliest timer (never later than it: an insert
//!   lowers it, a removal leaves it, the promoter sets it right).
//!
//! A job's timer is in `timers` or in its bucket, never both: every script that sets one clears the
//! other ([`TIMER_LUA`]). The promoter ([`Store::promote_far_timers`], each shard's pump) moves the
//! horizon on (`until` = now + horizon) and then every timer it passed into `timers`, arming those
//! the pump has passed already. A parked timer carries its job's generation: one whose job changed
//! or went since (written beside a service of an older version, which knows only `timers`) is
//! dropped rather than moved, so no stale timer ever fires.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;

use super::scripts::JOB_STATE_LUA;
use super::Store;
use crate::error::Result;

/// Lua that the scripts setting, clearing or reading a job's timer share. `put_timers(timers,
/// entries, place)` sets timers from `{ms, id, generation, ...}` (ms as strings): those due by the
/// horizon in `timers` (one `ZADD`), the rest parked. `place` says where the jobs' timers may be
/// now, which spares a command a job where it is known: `'near'` in `timers` if anywhere (a fire
/// moving its own), `'unsaved'` for jobs whose records are about to be written (those saved before,
/// a create run again, may have one anywhere: one `MGET` tells them apart), `nil` anywhere.
/// `drop_timer` clears one wherever it is; `timer_at` reads its instant (ms, a string) or `false`.
pub(super) const TIMER_LUA: &str = r#"
local far_bounds = {}
local function far_until(timers)
  local bound = far_bounds[timers]
  if bound == nil then
    bound = tonumber(redis.call('GET', timers .. ':far:until') or '') or false
    far_bounds[timers] = bound
  end
  return bound
end
local function far_bucket(timers, id) return timers .. ':far:' .. string.sub(id, -2) end
-- `place` here: 'new' (nowhere yet), 'near', or nil.
local function place_timers(timers, entries, place)
  local bound = far_until(timers)
  local near, lowest = {}, {}
  for i = 1, #entries, 3 do
    local ms, id = entries[i], entries[i + 1]
    if bound and tonumber(ms) > bound then
      if place ~= 'new' then redis.call('ZREM', timers, id) end
      local packed = ms .. string.format('%06d', tonumber(entries[i + 2]) % 1000000)
      redis.call('HSET', far_bucket(timers, id), id, packed)
      local suffix = string.sub(id, -2)
      if not lowest[suffix] or tonumber(ms) < tonumber(lowest[suffix]) then lowest[suffix] = ms end
    else
      near[#near + 1] = ms
      near[#near + 1] = id
      if bound and not place then redis.call('HDEL', far_bucket(timers, id), id) end
    end
  end
  if #near > 0 then redis.call('ZADD', timers, unpack(near)) end
  local scored = {}
  for suffix, ms in pairs(lowest) do
    scored[#scored + 1] = ms
    scored[#scored + 1] = suffix
  end
  if #scored > 0 then redis.call('ZADD', timers .. ':far', 'LT', unpack(scored)) end
end
local function put_timers(timers, entries, place)
  if place ~= 'unsaved' then return place_timers(timers, entries, place) end
  -- `{prefix}:timers` names the records `{prefix}:job:{id}`.
  local records = {}
  for i = 2, #entries, 3 do records[#records + 1] = string.sub(timers, 1, -7) .. 'job:' .. entries[i] end
  local new, saved = {}, {}
  for first = 1, #records, 1000 do
    local found = redis.call('MGET', unpack(records, first, math.min(first + 999, #records)))
    for k = 1, #found do
      local list = found[k] and saved or new
      local i = (first + k - 2) * 3
      list[#list + 1], list[#list + 2], list[#list + 3] = entries[i + 1], entries[i + 2], entries[i + 3]
    end
  end
  place_timers(timers, new, 'new')
  place_timers(timers, saved, nil)
end
local function put_timer(timers, id, ms, generation, place)
  put_timers(timers, {ms, id, generation}, place)
end
local function drop_timer(timers, id)
  redis.call('ZREM', timers, id)
  if far_until(timers) then redis.call('HDEL', far_bucket(timers, id), id) end
end
local function timer_at(timers, id)
  local score = redis.call('ZSCORE', timers, id)
  if score then return score end
  local parked = redis.call('HGET', far_bucket(timers, id), id)
  return parked and string.match(parked, '^(%d+)%d%d%d%d%d%d$') or false
end
"#;

/// [`TIMER_LUA`]'s `put_timers` as a script of its own, for the transactions that save jobs (`EVAL`
/// inside `MULTI`, as [`super::timers::arm_many`]). KEYS: `timers`. ARGV: the place (`near`,
/// `unsaved` or `any`), then ms, id, generation triples.
static PUT_TIMERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{TIMER_LUA}local place = ARGV[1]\nif place == 'any' then place = nil end\n\
         put_timers(KEYS[1], {{unpack(ARGV, 2)}}, place)"
    )
});

/// [`TIMER_LUA`]'s `drop_timer` as a script of its own. KEYS: `timers`. ARGV: the job's id.
static DROP_TIMER: LazyLock<String> =
    LazyLock::new(|| format!("{TIMER_LUA}drop_timer(KEYS[1], ARGV[1])"));

/// Moves the horizon of one shard to at least ARGV[1] (ms), then up to ARGV[2] buckets' timers it
/// passed into `timers` (arming those within the pump's bound), dropping those whose job changed or
/// went. KEYS: `timers`, the unarmed set. ARGV: the horizon, buckets a call, the shard's prefix.
/// Returns {moved, dropped, buckets looked at}. A bucket's records are read in one `MGET` and its
/// timers moved in one `ZADD`: per-command costs, not the moves, are what a script pays most for.
const PROMOTE: &str = r#"
local timers, unarmed, limit, prefix = KEYS[1], KEYS[2], tonumber(ARGV[2]), ARGV[3]
local horizon = tonumber(ARGV[1])
local stored = tonumber(redis.call('GET', timers .. ':far:until') or '')
if not stored or horizon > stored then
  redis.call('SET', timers .. ':far:until', ARGV[1])
else
  horizon = stored
end
-- As `arm` does: into the unarmed set only what the pump has passed (everything before it ran).
local armed_until = tonumber(redis.call('GET', unarmed .. ':until') or '')
-- A command over a long list, a thousand values a call (within what Lua's unpack takes).
local function each_chunk(list, call)
  local result = {}
  for first = 1, #list, 1000 do
    for _, value in ipairs(call(unpack(list, first, math.min(first + 999, #list)))) do
      result[#result + 1] = value
    end
  end
  return result
end
local function as_list(reply) if type(reply) == 'table' then return reply end return {} end
local index = timers .. ':far'
local due = redis.call('ZRANGEBYSCORE', index, '-inf', horizon, 'LIMIT', 0, limit)
local moved, dropped = 0, 0
for _, suffix in ipairs(due) do
  local bucket = index .. ':' .. suffix
  local entries = redis.call('HGETALL', bucket)
  local ids, instants, generations, records = {}, {}, {}, {}
  local lowest, kept = nil, 0
  for i = 1, #entries, 2 do
    -- Read as text: the packed number is past what a Lua number holds exactly.
    local ms, generation = string.match(entries[i + 1], '^(%d+)(%d%d%d%d%d%d)$')
    if not ms or tonumber(ms) <= horizon then
      ids[#ids + 1] = entries[i]
      instants[#ids] = ms
      generations[#ids] = generation
      records[#ids] = prefix .. ':job:' .. entries[i]
    else
      kept = kept + 1
      if not lowest or tonumber(ms) < lowest then lowest = tonumber(ms) end
    end
  end
  if #ids > 0 then
    local raws = each_chunk(records, function(...) return redis.call('MGET', ...) end)
    local near, armed = {}, {}
    for k, id in ipairs(ids) do
      local ms, raw = instants[k], raws[k]
      local read, stored_generation = false, nil
      if raw then
        local ok, _, generation = pcall(job_state, raw)
        read, stored_generation = ok, generation
      end
      local current = read and tonumber(stored_generation) % 1000000 == tonumber(generations[k])
      -- A record that cannot be read goes on to the pump, which sets it aside as it does any.
      if ms and raw and (current or not read) then
        near[#near + 1] = ms
        near[#near + 1] = id
        if read and (not armed_until or tonumber(ms) <= armed_until) then
          armed[#armed + 1] = ms
          armed[#armed + 1] = id .. '|' .. stored_generation
        end
        moved = moved + 1
      else
        dropped = dropped + 1
      end
    end
    each_chunk(near, function(...) return as_list(redis.call('ZADD', timers, 'NX', ...)) end)
    each_chunk(armed, function(...) return as_list(redis.call('ZADD', unarmed, ...)) end)
    if kept == 0 then
      redis.call('DEL', bucket)
    else
      each_chunk(ids, function(...) return as_list(redis.call('HDEL', bucket, ...)) end)
    end
  end
  if lowest then
    redis.call('ZADD', index, string.format('%d', lowest), suffix)
  else
    redis.call('ZREM', index, suffix)
  end
end
return {moved, dropped, #due}
"#;

static PROMOTE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{JOB_STATE_LUA}{PROMOTE}")));

/// Buckets a call of the promoter looks at (about 260 timers each at a million parked in a shard,
/// 512 before a bucket outgrows its listpack), so that a call holds Redis for a few milliseconds
/// even when a million timers come within the horizon at once.
const PROMOTE_BUCKETS_PER_CALL: usize = 4;

/// The far bucket of job `id` whose shard's `timers` key is `timers` (as [`TIMER_LUA`] names it).
pub(super) fn far_bucket_key(timers: &str, id: &str) -> String {
    let suffix = &id[id.len().saturating_sub(2)..];
    format!("{timers}:far:{suffix}")
}

/// The instant (ms) a bucket's value holds (the digits before the generation's six).
pub(super) fn parked_ms(value: &str) -> Option<i64> {
    let instant = value.get(..value.len().checked_sub(6)?)?;
    instant.parse().ok()
}

/// Adds to a transaction the setting of timers of jobs of one shard, (ms, id, generation) each:
/// see [`TIMER_LUA`]. `place` as `put_timers` takes it (`near`, `unsaved`, or `any` for `nil`).
pub(super) fn put_timers(
    pipe: &mut redis::Pipeline,
    timers: &str,
    place: &str,
    entries: &[(i64, &str, u64)],
) {
    for chunk in entries.chunks(super::scripts::PAIRS_PER_CALL) {
        let cmd = pipe
            .cmd("EVAL")
            .arg(PUT_TIMERS.as_str())
            .arg(1)
            .arg(timers)
            .arg(place);
        for (ms, id, generation) in chunk {
            cmd.arg(ms).arg(*id).arg(generation);
        }
        cmd.ignore();
    }
}

/// Adds to a transaction the clearing of job `id`'s timer, wherever it is.
pub(super) fn drop_timer(pipe: &mut redis::Pipeline, timers: &str, id: &str) {
    pipe.cmd("EVAL")
        .arg(DROP_TIMER.as_str())
        .arg(1)
        .arg(timers)
        .arg(id)
        .ignore();
}

/// What a promotion of one shard did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// Timers moved into `timers`.
    pub moved: u64,
    /// Timers dropped: their jobs changed or went since they were parked.
    pub dropped: u64,
}

impl Store {
    /// Moves `shard`'s horizon to `horizon` and every parked timer due by then into `timers`, a few
    /// buckets a call (see the module's notes). Safe beside writers and another promoter: each call
    /// is atomic, and a timer parked meanwhile is due after the horizon.
    pub async fn promote_far_timers(&self, shard: u16, horizon: DateTime<Utc>) -> Result<Promoted> {
        let mut promoted = Promoted::default();
        loop {
            let mut conn = self.conn.clone();
            let (moved, dropped, looked): (u64, u64, usize) = PROMOTE_SCRIPT
                .key(self.shard_key(shard, "timers"))
                .key(self.shard_key(shard, super::scripts::UNARMED))
                .arg(horizon.timestamp_millis())
                .arg(PROMOTE_BUCKETS_PER_CALL)
                .arg(self.shards.prefix(shard))
                .invoke_async(&mut conn)
                .await?;
            promoted.moved += moved;
            promoted.dropped += dropped;
            if looked < PROMOTE_BUCKETS_PER_CALL {
                return Ok(promoted);
            }
        }
    }

    /// Whether every shard has a far horizon: a provisioner has promoted it, and timers due after it
    /// are parked from then on.
    pub async fn far_horizon_kept(&self) -> Result<bool> {
        use redis::AsyncCommands;
        let kept = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                Ok(conn
                    .exists::<_, bool>(self.shard_key(shard, "timers:far:until"))
                    .await?)
            })
            .await?;
        Ok(kept.into_iter().all(|kept| kept))
    }

    /// Parked timers of `shard` due at or before `before`: (job id, ms), at most `limit`, in no order.
    pub(super) async fn parked_due(
        &self,
        shard: u16,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        use redis::AsyncCommands;
        let timers = self.shard_key(shard, "timers");
        let mut conn = self.conn.clone();
        let buckets: Vec<String> = conn
            .zrangebyscore(format!("{timers}:far"), "-inf", before)
            .await?;
        let mut due = Vec::new();
        for suffix in buckets {
            let entries: Vec<(String, String)> =
                conn.hgetall(format!("{timers}:far:{suffix}")).await?;
            due.extend(entries.into_iter().filter_map(|(id, value)| {
                let ms = parked_ms(&value)?;
                (ms <= before).then_some((id, ms))
            }));
            if due.len() >= limit {
                break;
            }
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_named_by_the_ids_last_two_characters() {
        assert_eq!(far_bucket_key("p:timers", "abcXY"), "p:timers:far:XY");
        assert_eq!(far_bucket_key("p:timers", "Z"), "p:timers:far:Z");
        assert_eq!(parked_ms("1800000000123000004"), Some(1_800_000_000_123));
        assert_eq!(parked_ms("123"), None);
        assert_eq!(parked_ms("x000004"), None);
    }
}
