//! Light fires: runs that need no instance and end at once (the dummy runner), recorded in one step.
//!
//! The general path takes eight Redis round trips per fire (job, timer, fire record, history, run,
//! two state moves, log). A light fire needs none of the steps in between, so one Lua script records
//! the fire once, writes the finished run and its output, moves the job's timer on and trims the job's
//! history, for a whole group of fires due together: one round trip per group, atomic per fire.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;

use super::far_timers::TIMER_LUA;
pub use super::scripts::TimerMove;
use super::scripts::{ARM_MANY_LUA, FIRE_MARKER_TTL_SECS, JOB_STATE_LUA, TRIM_ENDED_LUA, UNARMED};
use super::{state_time_field, FireRecord, Store};
use crate::error::Result;
use crate::model::RunState;

/// One light fire, prepared: everything the script writes is known before the instant comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightFire {
    /// Drawn in the job's shard ([`Store::new_run_id`]).
    pub run_id: String,
    pub job_id: String,
    pub account: String,
    pub generation: u64,
    pub attempt: u32,
    pub scheduled_at: DateTime<Utc>,
    pub timer: TimerMove,
    /// Runs of the job to keep (its `history_limit`).
    pub keep_runs: usize,
    pub output: String,
}

/// KEYS: timers, unarmed, then per fire: marker, run, job's runs, job.
/// ARGV: key prefix, now (ms), log cap, marker TTL, n, then n field/value pairs every run gets, then
/// per fire: run id, job id, generation, attempt, scheduled (ms), scheduled (RFC 3339), account,
/// timer move ('' leave, '-' clear, else the next fire in ms), runs to keep, output.
/// Returns per fire: status (0 new, 1 recorded before, 2 stale, 3 timer moved past it) and the run id.
///
/// Once only: a scheduled fire is new while its job's timer still points at it (the fire moves the
/// timer, atomically, so a second delivery finds it moved); a fire that leaves the timer alone (a
/// manual run, a retry) writes a marker key instead. A marker written by the general path (which
/// records first and finishes after) is honoured by both. The output goes in the run's hash (`output`): one
/// key less per fire than a log of its own.
///
/// What the script reads of every fire (its job, its marker, its timer) is read in three commands
/// for the whole group, and the timers are moved in one or two at the end: Redis spends more on
/// each command a script calls than on most of the commands themselves. So the fires of one call
/// must be of different jobs ([`distinct_jobs`] splits a group), or a later fire of a job would
/// read what an earlier one is about to change.
///
/// Trimmed runs' keys are built from the shard's prefix (their ids are only known inside): every key
/// a script touches is in one shard, and so in one slot of a cluster.
const FIRE_LIGHT: &str = r#"
local prefix, now_ms, cap, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local common_end = 5 + 2 * tonumber(ARGV[5])
local common = {}
for i = 6, common_end do common[#common + 1] = ARGV[i] end
local fires = (#KEYS - 2) / 4
local job_keys, markers, job_ids = {}, {}, {}
for i = 0, fires - 1 do
  job_keys[i + 1], markers[i + 1] = KEYS[2 + i * 4 + 4], KEYS[2 + i * 4 + 1]
  job_ids[i + 1] = ARGV[common_end + i * 10 + 2]
end
local raws = redis.call('MGET', unpack(job_keys))
local existing = redis.call('MGET', unpack(markers))
local scores = redis.call('ZMSCORE', KEYS[1], unpack(job_ids))
local results, cleared, moved, near = {}, {}, {}, {}
for i = 0, fires - 1 do
  local k, a = 2 + i * 4, common_end + i * 10
  local marker, run, runs = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local run_id, job_id, generation, move = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 8]
  local status, id = 0, run_id
  local raw = raws[i + 1]
  local enabled, stored_generation = false, nil
  if raw then enabled, stored_generation = job_state(raw) end
  if not enabled or stored_generation ~= generation then
    status, id = 2, ''
  elseif existing[i + 1] then
    status, id = 1, existing[i + 1]
  elseif move ~= '' then
    local score = scores[i + 1]
    if not score or tonumber(score) ~= tonumber(ARGV[a + 5]) then status, id = 3, '' end
  else
    redis.call('SET', marker, run_id, 'EX', ttl)
  end
  if status == 0 then
    redis.call('HSET', run, 'id', run_id, 'job_id', job_id, 'account', ARGV[a + 7],
      'attempt', ARGV[a + 4], 'scheduled_at', ARGV[a + 6], 'output', string.sub(ARGV[a + 10], 1, cap),
      unpack(common))
    redis.call('ZADD', runs, now_ms, run_id)
    if move == '-' then
      cleared[#cleared + 1] = job_id
    elseif move ~= '' then
      moved[#moved + 1] = move
      moved[#moved + 1] = job_id
      moved[#moved + 1] = generation
      -- the member as `unarmed_member` names it
      near[#near + 1] = move
      near[#near + 1] = job_id .. '|' .. generation
    end
    trim_ended(runs, prefix, tonumber(ARGV[a + 9]))
  end
  results[#results + 1] = status
  results[#results + 1] = id
end
if #cleared > 0 then redis.call('ZREM', KEYS[1], unpack(cleared)) end
if #moved > 0 then put_timers(KEYS[1], moved, 'near') end
if #near > 0 then arm_many(KEYS[2], near) end
return results
"#;

static FIRE_LIGHT_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{JOB_STATE_LUA}{TIMER_LUA}{ARM_MANY_LUA}{TRIM_ENDED_LUA}{FIRE_LIGHT}"
    ))
});

/// `fires` cut, in order, into runs in which no job comes twice (see [`FIRE_LIGHT`]): mostly one.
fn distinct_jobs<'a, 'f>(fires: &'a [&'f LightFire]) -> Vec<&'a [&'f LightFire]> {
    let mut parts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (index, fire) in fires.iter().enumerate() {
        if !seen.insert(fire.job_id.as_str()) {
            parts.push(&fires[start..index]);
            seen.clear();
            seen.insert(fire.job_id.as_str());
            start = index;
        }
    }
    if start < fires.len() {
        parts.push(&fires[start..]);
    }
    parts
}

impl Store {
    /// Records light fires due together, each once, as runs that succeeded at `now` with their
    /// output (capped at `log_cap` bytes). Returns one [`FireRecord`] per fire, in order. One script
    /// per shard the fires are of (the pump hands over one shard's timers at a time, so mostly one).
    pub async fn fire_light(
        &self,
        fires: &[LightFire],
        now: DateTime<Utc>,
        log_cap: usize,
    ) -> Result<Vec<FireRecord>> {
        let mut records = vec![FireRecord::Stale; fires.len()];
        let indexed: Vec<(usize, &LightFire)> = fires.iter().enumerate().collect();
        for (shard, group) in self.by_shard(&indexed, |(_, fire)| &fire.job_id) {
            let group_fires: Vec<&LightFire> = group.iter().map(|(_, fire)| *fire).collect();
            let mut done = Vec::with_capacity(group_fires.len());
            for part in distinct_jobs(&group_fires) {
                done.extend(self.fire_light_in(shard, part, now, log_cap).await?);
            }
            for ((index, _), record) in group.into_iter().zip(done) {
                records[*index] = record;
            }
        }
        Ok(records)
    }

    async fn fire_light_in(
        &self,
        shard: u16,
        fires: &[&LightFire],
        now: DateTime<Utc>,
        log_cap: usize,
    ) -> Result<Vec<FireRecord>> {
        let now_text = now.to_rfc3339();
        let common = [
            ("state", RunState::Succeeded.to_string()),
            (&state_time_field(RunState::Pending), now_text.clone()),
            (&state_time_field(RunState::Running), now_text.clone()),
            (&state_time_field(RunState::Succeeded), now_text),
            ("exit_code", "0".to_string()),
        ]
        .map(|(field, value)| (field.to_string(), value));

        let mut script = FIRE_LIGHT_SCRIPT.prepare_invoke();
        script
            .key(self.shard_key(shard, "timers"))
            .key(self.shard_key(shard, UNARMED))
            .arg(self.shards.prefix(shard))
            .arg(now.timestamp_millis())
            .arg(log_cap)
            .arg(FIRE_MARKER_TTL_SECS)
            .arg(common.len());
        for (field, value) in &common {
            script.arg(field).arg(value);
        }
        for fire in fires {
            let timer = fire.timer.as_arg();
            script
                .key(self.fire_key(&fire.job_id, fire.scheduled_at, fire.attempt))
                .key(self.shard_key(shard, &format!("run:{}", fire.run_id)))
                .key(self.shard_key(shard, &format!("job:{}:runs", fire.job_id)))
                .key(self.shard_key(shard, &format!("job:{}", fire.job_id)))
                .arg(&fire.run_id)
                .arg(&fire.job_id)
                .arg(fire.generation)
                .arg(fire.attempt)
                .arg(fire.scheduled_at.timestamp_millis())
                .arg(fire.scheduled_at.to_rfc3339())
                .arg(&fire.account)
                .arg(timer)
                .arg(fire.keep_runs)
                .arg(&fire.output);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(i64, String)> = script.invoke_async(&mut conn).await?;
        self.replicated_at(&self.shard_key(shard, "")).await?;
        Ok(rows
            .into_iter()
            .map(|(status, id)| match status {
                0 => FireRecord::New(id),
                1 => FireRecord::Existing(id),
                3 => FireRecord::Passed,
                _ => FireRecord::Stale,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(job_id: &str) -> LightFire {
        LightFire {
            run_id: format!("run-of-{job_id}"),
            job_id: job_id.to_string(),
            account: "acct".into(),
            generation: 1,
            attempt: 1,
            scheduled_at: DateTime::<Utc>::UNIX_EPOCH,
            timer: TimerMove::Advance(None),
            keep_runs: 10,
            output: String::new(),
        }
    }

    fn jobs_of(parts: &[&[&LightFire]]) -> Vec<Vec<String>> {
        parts
            .iter()
            .map(|part| part.iter().map(|f| f.job_id.clone()).collect())
            .collect()
    }

    #[test]
    fn a_job_coming_again_starts_a_new_script() {
        let fires: Vec<LightFire> = ["a", "b", "a", "c", "b", "b"].map(fire).into();
        let refs: Vec<&LightFire> = fires.iter().collect();
        assert_eq!(
            jobs_of(&distinct_jobs(&refs)),
            [vec!["a", "b"], vec!["a", "c", "b"], vec!["b"]]
        );
        let distinct: Vec<&LightFire> = fires[..2].iter().collect();
        assert_eq!(jobs_of(&distinct_jobs(&distinct)), [vec!["a", "b"]]);
        assert!(distinct_jobs(&[]).is_empty());
    }
}
