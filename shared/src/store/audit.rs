//! The audit log in Redis: per account a sorted set of entries (`audit:{account}`) and per job
//! another (`audit:job:{id}`), each scored by its time in milliseconds, each entry its JSON. Entries
//! older than the retention leave both as the next entry is written, and a set not written for the
//! retention expires whole (a deleted job's).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;

use super::Store;
use crate::error::{Error, Result};
use crate::model::AuditEntry;

/// KEYS: the account's entries, the job's entries. ARGV: the entry, its time (ms), the oldest time
/// kept (ms), the retention (s).
const RECORD: &str = r#"
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 1
"#;
static RECORD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD));

impl Store {
    fn audit_key(&self, account: &str) -> String {
        // The account's name, hex-encoded: any name is a safe key part.
        self.key(&format!("audit:{}", hex::encode(account)))
    }

    fn job_audit_key(&self, job_id: &str) -> String {
        self.key(&format!("audit:job:{job_id}"))
    }

    /// Keeps `entry` in its account's log and its job's, dropping entries older than `retention`.
    pub async fn record_audit(
        &self,
        entry: &AuditEntry,
        retention: chrono::Duration,
    ) -> Result<()> {
        let json = serde_json::to_string(entry)
            .map_err(|e| Error::internal(format!("audit entry: {e}")))?;
        let oldest = entry.at - retention;
        let mut conn = self.conn.clone();
        // Two keys of the deployment's prefix: one slot on a cluster, as every account key.
        let _: i64 = RECORD_SCRIPT
            .key(self.audit_key(&entry.account))
            .key(self.job_audit_key(&entry.job_id))
            .arg(json)
            .arg(entry.at.timestamp_millis())
            .arg(oldest.timestamp_millis())
            .arg(retention.num_seconds().max(1))
            .invoke_async(&mut conn)
            .await?;
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
        let key = match job_id {
            Some(job_id) => self.job_audit_key(job_id),
            None => self.audit_key(account),
        };
        let mut conn = self.conn.clone();
        let rows: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(to.timestamp_millis())
            .arg(from.timestamp_millis())
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| serde_json::from_str::<AuditEntry>(row).ok())
            // A job's log holds its own account's entries only; checked all the same.
            .filter(|entry| entry.account == account)
            .collect())
    }
}
