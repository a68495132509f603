//! What pauses a job from the workers (`policies.pause_after_failures`): a count of its runs that
//! ended failed in a row, and the compare-and-set that saves it paused only if nobody changed it
//! since it was read.
//!
//! Keys, under the job's shard prefix `p` ([`super::shards`]):
//! - `p:job:{id}:failures_in_a_row`: counted up by each run that ends failed for good, deleted by one
//!   that succeeds and when the job is paused for it (so that a resumed job starts a new streak)

use std::sync::LazyLock;

use redis::Script;

use super::far_timers::TIMER_LUA;
use super::job_record::stored_job_json;
use super::notifications::{outbox_member, NOTE_EVENT_LUA, OUTBOX};
use super::scripts::{unarmed_member, JOB_STATE_LUA, UNARMED};
use super::Store;
use crate::error::Result;
use crate::model::{Job, NotifyEvent};

/// KEYS: job record, timers, unarmed, failures in a row, the run that paused it, the notification
/// outbox. ARGV: job id, the generation it must still be at, the paused record, the old generation's
/// unarmed member, the `paused` notification's member, now (ms). 1 if saved, 0 if the job moved on.
const PAUSE_IF_CURRENT: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local read, _, generation = pcall(job_state, raw)
if not read or generation ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
drop_timer(KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[4])
note_event(KEYS[5], KEYS[6], ARGV[5], ARGV[6])
return 1
"#;
static PAUSE_IF_CURRENT_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{JOB_STATE_LUA}{TIMER_LUA}{NOTE_EVENT_LUA}{PAUSE_IF_CURRENT}"
    ))
});

pub(super) fn failures_key(job_id: &str) -> String {
    format!("job:{job_id}:failures_in_a_row")
}

impl Store {
    /// Counts a run of `job_id` that ended for good: failed adds one to its failures in a row,
    /// succeeded ends the streak. Returns the failures in a row now.
    pub async fn count_run_outcome(&self, job_id: &str, failed: bool) -> Result<u64> {
        let key = self.owned_key(job_id, &failures_key(job_id));
        let mut conn = self.conn.clone();
        let count: u64 = if failed {
            redis::cmd("INCR").arg(&key).query_async(&mut conn).await?
        } else {
            let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            0
        };
        Ok(count)
    }

    /// Saves `paused` (a job paused by [`Job::paused_with`]) only if the stored job is still at
    /// `read_generation`, dropping its timer and its failures in a row. `false` if it was changed
    /// meanwhile (an edit, a pause or a resume wins over a worker's pause).
    pub async fn pause_job_if_current(
        &self,
        paused: &Job,
        read_generation: u64,
        because_of_run: &str,
    ) -> Result<bool> {
        let id = &paused.id;
        let mut conn = self.conn.clone();
        let saved: i64 = PAUSE_IF_CURRENT_SCRIPT
            .key(self.owned_key(id, &format!("job:{id}")))
            .key(self.owned_key(id, "timers"))
            .key(self.owned_key(id, UNARMED))
            .key(self.owned_key(id, &failures_key(id)))
            .key(self.owned_key(id, &format!("run:{because_of_run}")))
            .key(self.owned_key(id, OUTBOX))
            .arg(id)
            .arg(read_generation)
            .arg(stored_job_json(paused)?)
            .arg(unarmed_member(id, read_generation))
            .arg(outbox_member(because_of_run, NotifyEvent::Paused))
            .arg(chrono::Utc::now().timestamp_millis())
            .invoke_async(&mut conn)
            .await?;
        self.replicated(id).await?;
        Ok(saved == 1)
    }
}
