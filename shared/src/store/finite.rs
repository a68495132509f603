//! Finite schedules (`policies.max_runs`, `policies.on_last_run`): the count of a job's scheduled
//! fires, and the compare-and-set that ends a job whose schedule is over once its last run has ended.
//!
//! Keys, under the job's shard prefix `p` ([`super::shards`]):
//! - `p:job:{id}:fired`: the scheduled fires of the job that made a run, counted by the script that
//!   records a fire (see `RECORD_FIRE` in [`super::runs`]), so each fire counts once

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::far_timers::TIMER_LUA;
use super::job_record::stored_job_json;
use super::scripts::{unarmed_member, JOB_STATE_LUA, TRIM_ENDED_LUA, UNARMED};
use super::Store;
use crate::error::Result;
use crate::model::Job;

/// How long the runs of a job that deleted itself (`on_last_run: delete`) stay readable by id.
pub const DELETED_JOB_RUNS_TTL_SECS: u64 = 7 * 24 * 3600;

pub(super) fn fired_key(job_id: &str) -> String {
    format!("job:{job_id}:fired")
}

/// KEYS: job record, timers, unarmed, the job's runs. ARGV: job id, the generation it must still be
/// at, prefix, the disabled record, the old generation's unarmed member. 1 if the job was still
/// enabled at that generation with no timer and no run under way, and is now saved disabled; 0 if not.
const DISABLE_IF_OVER: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local read, enabled, generation = pcall(job_state, raw)
if not read or not enabled or generation ~= ARGV[2] then return 0 end
if timer_at(KEYS[2], ARGV[1]) then return 0 end
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[4], 0, 199)) do
  if unfinished(redis.call('HGET', ARGV[3] .. ':run:' .. id, 'state') or '') then return 0 end
end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[5])
return 1
"#;
static DISABLE_IF_OVER_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{JOB_STATE_LUA}{TIMER_LUA}{TRIM_ENDED_LUA}{DISABLE_IF_OVER}"
    ))
});

impl Store {
    /// How many scheduled fires of the job have made a run (what `max_runs` counts).
    pub async fn scheduled_fire_count(&self, job_id: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let count: Option<u64> = conn.get(self.owned_key(job_id, &fired_key(job_id))).await?;
        Ok(count.unwrap_or(0))
    }

    /// Saves `disabled` (the job read at `read_generation`, disabled) only if the stored job is
    /// still enabled at that generation, its schedule is over (it has no timer) and none of its runs
    /// is under way: the step that ends a finite schedule, taken by whichever of its runs ends last.
    /// `false` if any of that does not hold (an edit made meanwhile wins).
    pub async fn disable_job_if_over(&self, disabled: &Job, read_generation: u64) -> Result<bool> {
        let id = &disabled.id;
        let mut conn = self.conn.clone();
        let saved: i64 = DISABLE_IF_OVER_SCRIPT
            .key(self.owned_key(id, &format!("job:{id}")))
            .key(self.owned_key(id, "timers"))
            .key(self.owned_key(id, UNARMED))
            .key(self.owned_key(id, &format!("job:{id}:runs")))
            .arg(id)
            .arg(read_generation)
            .arg(self.shards.prefix(self.shards.of(id)))
            .arg(stored_job_json(disabled)?)
            .arg(unarmed_member(id, read_generation))
            .invoke_async(&mut conn)
            .await?;
        self.replicated(id).await?;
        Ok(saved == 1)
    }
}
