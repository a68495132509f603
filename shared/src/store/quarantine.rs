//! Quarantine: jobs whose stored record cannot be read back (written by a bug, or by hand) are set
//! aside with the reason, instead of being fired, failed and re-armed every reconcile period for
//! ever. Their timer leaves `timers` (the reconciler no longer sees them) and is kept with the
//! reason, so that [`Store::release_quarantined`] can put it back once the record reads again.
//!
//! Keys, under the prefix `p` of the job's shard ([`super::shards`]):
//! - `p:quarantine`: job id → `{"reason", "at", "timer_ms"}` as JSON

use std::sync::LazyLock;

use chrono::{DateTime, TimeZone, Utc};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::far_timers::TIMER_LUA;
use super::scripts::{ARM_LUA, QUARANTINE_LUA, UNARMED};
use super::Store;
use crate::error::Result;
use crate::model::Job;

/// The hash of jobs set aside, per shard.
pub(super) const QUARANTINE: &str = "quarantine";

/// KEYS: quarantine, timers. ARGV: job id, reason, now (RFC 3339).
const QUARANTINE_ONE: &str = "quarantine(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])";

static QUARANTINE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TIMER_LUA}{QUARANTINE_LUA}{QUARANTINE_ONE}")));

/// KEYS: quarantine, timers, unarmed. ARGV: job id, generation. Puts the kept timer back (in
/// `timers` and for the pump) and forgets the entry. Returns 1 if it was quarantined.
const RELEASE: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record.timer_ms then
  local ms = string.format('%d', record.timer_ms)
  put_timer(KEYS[2], ARGV[1], ms, ARGV[2])
  arm(KEYS[3], ms, ARGV[1] .. '|' .. ARGV[2])
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

static RELEASE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TIMER_LUA}{ARM_LUA}{RELEASE}")));

/// A job set aside because its record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuarantinedJob {
    #[serde(default)]
    pub job_id: String,
    /// Why: what reading the record said.
    pub reason: String,
    /// When it was set aside (RFC 3339).
    pub at: String,
    /// Its next fire when it was set aside (ms since the epoch), restored on release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_ms: Option<i64>,
}

impl QuarantinedJob {
    pub fn timer(&self) -> Option<DateTime<Utc>> {
        Utc.timestamp_millis_opt(self.timer_ms?).single()
    }
}

/// A job's record as read: there, gone, or there and unreadable (with why).
#[derive(Debug)]
pub enum JobRecord {
    Found(Box<Job>),
    Missing,
    Unreadable(String),
}

impl Store {
    /// Sets `job_id` aside: its timer leaves `timers` (kept with `reason`), so nothing fires or
    /// re-arms it until it is released. Idempotent.
    pub async fn quarantine_job(&self, job_id: &str, reason: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = QUARANTINE_SCRIPT
            .key(self.owned_key(job_id, QUARANTINE))
            .key(self.owned_key(job_id, "timers"))
            .arg(job_id)
            .arg(reason)
            .arg(Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await?;
        tracing::error!(job_id, reason, "job quarantined: its record cannot be read");
        self.note_event("job_quarantined", 1).await;
        self.replicated(job_id).await
    }

    /// Every job set aside, over every shard.
    pub async fn quarantined_jobs(&self) -> Result<Vec<QuarantinedJob>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let entries: Vec<(String, String)> =
                    conn.hgetall(self.shard_key(shard, QUARANTINE)).await?;
                Ok(entries)
            })
            .await?;
        let mut jobs: Vec<QuarantinedJob> = per_shard
            .into_iter()
            .flatten()
            .map(|(job_id, raw)| {
                let mut job: QuarantinedJob =
                    serde_json::from_str(&raw).unwrap_or_else(|_| QuarantinedJob {
                        job_id: String::new(),
                        reason: raw.clone(),
                        at: String::new(),
                        timer_ms: None,
                    });
                job.job_id = job_id;
                job
            })
            .collect();
        jobs.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(jobs)
    }

    /// Puts a quarantined job back on its schedule, if its record now reads: its kept timer is
    /// restored for the pump. `Ok(false)` if it was not quarantined; an error if it still cannot be
    /// read.
    pub async fn release_quarantined(&self, job_id: &str) -> Result<bool> {
        let job = match self.read_job(job_id).await? {
            JobRecord::Found(job) => job,
            JobRecord::Missing => {
                // Nothing to put back: only forget the entry.
                let mut conn = self.conn.clone();
                let removed: u64 = conn
                    .hdel(self.owned_key(job_id, QUARANTINE), job_id)
                    .await?;
                return Ok(removed > 0);
            }
            JobRecord::Unreadable(why) => {
                return Err(crate::Error::conflict(format!(
                    "job {job_id} still cannot be read: {why}"
                )))
            }
        };
        let mut conn = self.conn.clone();
        let released: i64 = RELEASE_SCRIPT
            .key(self.owned_key(job_id, QUARANTINE))
            .key(self.owned_key(job_id, "timers"))
            .key(self.owned_key(job_id, UNARMED))
            .arg(job_id)
            .arg(job.generation)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(job_id).await?;
        Ok(released == 1)
    }
}
