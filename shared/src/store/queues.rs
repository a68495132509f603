//! Overlap that queues (`concurrency: queue` and `queue_all`): the fires that wait, as `queued` runs,
//! for the job's run under way to end, and the step that starts the next of them once it has.
//!
//! A fire is put in line by the script that records it (see `RECORD_FIRE` in [`super::runs`]), so it
//! is durable from the moment it is decided. Keys, under the job's shard prefix `p`:
//! - `p:job:{id}:queue`: the job's waiting runs, oldest first
//! - `p:queues`: the jobs of the shard with a queue, which the reaper's sweep walks so that a crash
//!   between a run's end and its successor's start never leaves a queue waiting for ever

use std::sync::LazyLock;

use chrono::Utc;
use redis::{AsyncCommands, Script};

use super::scripts::{TRIM_ENDED_LUA, UNARMED};
use super::timers::timer_member;
use super::Store;
use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{Job, RunState};

/// The shard's set of jobs with runs waiting.
pub(super) const QUEUES: &str = "queues";

pub(super) fn queue_key(job_id: &str) -> String {
    format!("job:{job_id}:queue")
}

/// KEYS: the job's queue, its runs, live runs, the head's run, delayed, unarmed, the shard's queues.
/// ARGV: key prefix, the head's run id, the fire that launches it (its member), now (ms), now (RFC
/// 3339), job id. Starts the head of the queue if none of the job's runs is under way: the run moves
/// to `pending` and its launch is armed, due now, in the same step. Returns 1 started, 0 a run is
/// under way, -1 the head is no longer the one read, 2 the head had left the line (cancelled): popped,
/// nothing started.
const START_NEXT: &str = r#"
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] then return -1 end
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, 199)) do
  if live_states[redis.call('HGET', ARGV[1] .. ':run:' .. id, 'state') or ''] then return 0 end
end
redis.call('LPOP', KEYS[1])
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[7], ARGV[6]) end
if redis.call('HGET', KEYS[4], 'state') ~= 'queued' then return 2 end
redis.call('HSET', KEYS[4], 'state', 'pending', 't:pending', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
return 1
"#;
static START_NEXT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{START_NEXT}")));

/// KEYS: the job's queue, the shard's queues. ARGV: key prefix, job id, now (RFC 3339). Cancels every
/// run still waiting and empties the line. Returns how many were cancelled.
const CANCEL_QUEUED: &str = r#"
local cancelled = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local run = ARGV[1] .. ':run:' .. id
  if redis.call('HGET', run, 'state') == 'queued' then
    redis.call('HSET', run, 'state', 'cancelled', 't:cancelled', ARGV[3])
    cancelled = cancelled + 1
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return cancelled
"#;
static CANCEL_QUEUED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CANCEL_QUEUED));

/// What [`Store::start_next_queued`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueStep {
    /// Nothing waits.
    Empty,
    /// A run of the job is under way: the line waits for it.
    Busy,
    /// This run left the line: `pending`, its launch armed.
    Started(String),
    /// The job is disabled or gone: this many waiting runs were cancelled.
    Cancelled(u64),
}

impl Store {
    /// Starts the job's next waiting run if none of its runs is under way (called as a run ends, and
    /// by the sweep): it moves to `pending` and its launch is armed in the same step, due now. A job
    /// disabled, paused or deleted meanwhile (`job` not enabled, or `None`) has its line cancelled.
    pub async fn start_next_queued(&self, job_id: &str, job: Option<&Job>) -> Result<QueueStep> {
        let queue = self.owned_key(job_id, &queue_key(job_id));
        let queues = self.owned_key(job_id, QUEUES);
        let prefix = self.shards.prefix(self.shards.of(job_id));
        let mut conn = self.conn.clone();
        let Some(job) = job.filter(|job| job.enabled) else {
            let cancelled: u64 = CANCEL_QUEUED_SCRIPT
                .key(&queue)
                .key(&queues)
                .arg(prefix)
                .arg(job_id)
                .arg(Utc::now().to_rfc3339())
                .invoke_async(&mut conn)
                .await?;
            self.replicated(job_id).await?;
            return Ok(QueueStep::Cancelled(cancelled));
        };
        loop {
            let head: Option<String> = conn.lindex(&queue, 0).await?;
            let Some(run_id) = head else {
                let () = conn.srem(&queues, job_id).await?;
                return Ok(QueueStep::Empty);
            };
            let run = self.get_run(&run_id).await?;
            let now = Utc::now();
            let member = match &run {
                Some(run) if run.state == RunState::Queued => timer_member(&FireMessage {
                    job_id: job_id.to_string(),
                    generation: job.generation,
                    scheduled_at: run.scheduled_at,
                    attempt: run.attempt,
                    manual: false,
                    relaunch: true,
                    interruptions: run.interruptions,
                    run_id: None,
                }),
                // Gone or moved on: popped by the script without a start.
                _ => String::new(),
            };
            let moved: i64 = START_NEXT_SCRIPT
                .key(&queue)
                .key(self.owned_key(job_id, &format!("job:{job_id}:runs")))
                .key(self.owned_key(job_id, super::scripts::LIVE_RUNS))
                .key(self.owned_key(job_id, &format!("run:{run_id}")))
                .key(self.owned_key(job_id, super::delayed::DELAYED))
                .key(self.owned_key(job_id, UNARMED))
                .key(&queues)
                .arg(prefix)
                .arg(&run_id)
                .arg(&member)
                .arg(now.timestamp_millis())
                .arg(now.to_rfc3339())
                .arg(job_id)
                .invoke_async(&mut conn)
                .await?;
            self.replicated(job_id).await?;
            match moved {
                1 => return Ok(QueueStep::Started(run_id)),
                0 => return Ok(QueueStep::Busy),
                // Another step moved the line meanwhile, or the head had left it: read it again.
                _ => continue,
            }
        }
    }

    /// The jobs with runs waiting, in every shard (what the sweep walks).
    pub async fn jobs_with_queues(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut jobs = Vec::new();
        for shard in self.shards.all() {
            let members: Vec<String> = conn.smembers(self.shard_key(shard, QUEUES)).await?;
            jobs.extend(members);
        }
        Ok(jobs)
    }

    /// The first `limit` runs waiting in the job's line, oldest first.
    pub async fn queued_run_ids(&self, job_id: &str, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn
            .lrange(
                self.owned_key(job_id, &queue_key(job_id)),
                0,
                limit as isize - 1,
            )
            .await?)
    }

    /// How many runs wait in the job's line.
    pub async fn queued_count(&self, job_id: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(conn
            .llen(self.owned_key(job_id, &queue_key(job_id)))
            .await?)
    }
}
