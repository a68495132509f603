//! The audit log in Redis: per account one sorted set (`audit:{account, hex}`) of entries, each its
//! JSON, scored by its time in milliseconds. Bounded twice, so that a deployment creating millions of
//! jobs keeps a log of a known size: entries older than the retention, and the oldest past the most
//! entries kept, leave as entries are written; a set not written for the retention expires whole.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;

use super::scripts::PAIRS_PER_CALL;
use super::Store;
use crate::error::{Error, Result};
use crate::model::AuditEntry;

/// KEYS: the account's entries. ARGV: the oldest time kept (ms), the most entries kept, the
/// retention (s), then (time (ms), entry) pairs: one `ZADD` for them all (a call costs Redis more
/// than a member), so the writer hands over at most [`PAIRS_PER_CALL`] at a time.
const RECORD: &str = r#"
if #ARGV > 3 then redis.call('ZADD', KEYS[1], unpack(ARGV, 4)) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;
static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD));

/// KEYS: the account's entries. ARGV: newest time (ms), oldest time (ms), what a matching entry holds
/// (`"job_id":"…"`), offset, limit. The window's entries that hold it, newest first, read a page of
/// 1,000 at a time over the whole window (the set is bounded).
const OF_JOB: &str = r#"
local found, skipped, from = {}, 0, 0
local offset, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
while #found < limit do
  local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'BYSCORE', 'REV', 'LIMIT', from, 1000)
  for _, entry in ipairs(page) do
    if string.find(entry, ARGV[3], 1, true) then
      if skipped < offset then skipped = skipped + 1
      elseif #found < limit then found[#found + 1] = entry end
    end
  end
  if #page < 1000 then break end
  from = from + 1000
end
return found
"#;
static OF_JOB_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(OF_JOB));

impl Store {
    fn audit_key(&self, account: &str) -> String {
        // The account's name, hex-encoded: any name is a safe key part.
        self.key(&format!("audit:{}", hex::encode(account)))
    }

    /// Keeps `entries` in their accounts' logs (one script per account), dropping entries older
    /// than `retention` and the oldest past `max_entries` per account.
    pub async fn record_audits(
        &self,
        entries: &[AuditEntry],
        retention: chrono::Duration,
        max_entries: usize,
    ) -> Result<()> {
        let mut by_account: BTreeMap<&str, Vec<&AuditEntry>> = BTreeMap::new();
        for entry in entries {
            by_account.entry(&entry.account).or_default().push(entry);
        }
        let oldest = (Utc::now() - retention).timestamp_millis();
        let mut parts: Vec<(&str, &[&AuditEntry])> = Vec::new();
        for (account, entries) in &by_account {
            parts.extend(entries.chunks(PAIRS_PER_CALL).map(|part| (*account, part)));
        }
        for (account, entries) in parts {
            let mut script = RECORD_SCRIPT.prepare_invoke();
            script
                .key(self.audit_key(account))
                .arg(oldest)
                .arg(max_entries.max(1))
                .arg(retention.num_seconds().max(1));
            for entry in entries {
                let json = serde_json::to_string(entry)
                    .map_err(|e| Error::internal(format!("audit entry: {e}")))?;
                script.arg(entry.at.timestamp_millis()).arg(json);
            }
            let mut conn = self.conn.clone();
            let _: i64 = script.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// An account's entries between `from` and `to` (inclusive), newest first, `limit` from
    /// `offset`; only those of `job_id` when given. Entries that cannot be read are skipped.
    pub async fn audit_page(
        &self,
        account: &str,
        job_id: Option<&str>,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        offset: usize,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let key = self.audit_key(account);
        let mut conn = self.conn.clone();
        let rows: Vec<String> = match job_id {
            Some(job_id) => {
                let holds = serde_json::to_string(&serde_json::json!({ "job_id": job_id }))
                    .unwrap_or_default();
                OF_JOB_SCRIPT
                    .key(key)
                    .arg(to.timestamp_millis())
                    .arg(from.timestamp_millis())
                    .arg(holds.trim_start_matches('{').trim_end_matches('}'))
                    .arg(offset)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await?
            }
            None => {
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(to.timestamp_millis())
                    .arg(from.timestamp_millis())
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?
            }
        };
        Ok(rows
            .iter()
            .filter_map(|row| serde_json::from_str::<AuditEntry>(row).ok())
            .filter(|entry| job_id.is_none_or(|id| entry.job_id == id))
            .collect())
    }
}
