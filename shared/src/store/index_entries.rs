//! Index entries not yet settled, on a cluster with shards.
//!
//! On a cluster with more than one shard a job and its account's indexes are in different slots, so
//! a save or a delete is two steps (see [`super::jobs`]) and a crash between them leaves an index
//! entry naming no job: listings skip it, but it counts toward the account's job quota. So the indexes' step also notes the entry
//! in `p:index:unsettled` (a sorted set of `[account, group, job id]` scored by when, in the indexes'
//! slot), and [`Store::settle_index_entries`], run by the reaper's sweep, looks at the notes older
//! than a grace: an entry whose job exists is settled (its note dropped); one whose job is gone is
//! taken out of both indexes. The grace is far longer than a save may take (a request gives up after
//! its response timeout and retries), so a save still under way is never undone.
//!
//! A single Redis, or a cluster with one shard (every key in the plain prefix's slot), writes both in
//! one transaction and notes nothing.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::Script;

use super::Store;
use crate::error::Result;
use crate::ids::is_id;
use crate::model::Job;

const UNSETTLED: &str = "index:unsettled";

/// Notes looked at per round of a sweep.
const SETTLE_BATCH: usize = 500;

/// What one sweep of the unsettled notes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SettledEntries {
    /// Notes whose job exists: dropped.
    pub settled: usize,
    /// Entries naming no job: taken out of their indexes.
    pub removed: usize,
}

/// Drops each note whose score is still the one read (one noted again since is left for a later
/// sweep); for those marked gone, also takes the job out of both indexes. Returns `{settled,
/// removed}`. KEYS[1]: the notes; then per note its account index and its group index. ARGV per
/// note: member, score as read, job id, 1 if the job is gone.
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local settled, removed = 0, 0
for i = 1, #ARGV / 4 do
  local member, score, id, gone = ARGV[4*i-3], ARGV[4*i-2], ARGV[4*i-1], ARGV[4*i]
  local now = redis.call('ZSCORE', KEYS[1], member)
  if now and tonumber(now) == tonumber(score) then
    redis.call('ZREM', KEYS[1], member)
    if gone == '1' then
      redis.call('ZREM', KEYS[2*i], id)
      redis.call('ZREM', KEYS[2*i+1], id)
      removed = removed + 1
    else
      settled = settled + 1
    end
  end
end
return {settled, removed}
",
    )
});

impl Store {
    /// Adds to `pipe` (the indexes' step) the note that `job`'s entries may name no job if the other
    /// step never happens.
    pub(super) fn note_unsettled(&self, pipe: &mut redis::Pipeline, job: &Job, at: DateTime<Utc>) {
        pipe.zadd(
            self.key(UNSETTLED),
            unsettled_member(job),
            at.timestamp_millis(),
        )
        .ignore();
    }

    /// Adds to `pipe` (the step after a delete) the dropping of the note made before it.
    pub(super) fn forget_unsettled(&self, pipe: &mut redis::Pipeline, job: &Job) {
        pipe.zrem(self.key(UNSETTLED), unsettled_member(job))
            .ignore();
    }

    /// Settles the notes older than `grace` (see the module's comment), a batch at a time until
    /// none is left or a batch changes nothing.
    pub async fn settle_index_entries(&self, grace: chrono::Duration) -> Result<SettledEntries> {
        let mut outcome = SettledEntries::default();
        let before = (Utc::now() - grace).timestamp_millis();
        let key = self.key(UNSETTLED);
        loop {
            let mut conn = self.conn.clone();
            let notes: Vec<(String, String)> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg("-inf")
                .arg(before)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(SETTLE_BATCH)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            if notes.is_empty() {
                return Ok(outcome);
            }
            // A note that cannot be read (never written so) names no entry: it is only dropped.
            let parsed: Vec<Option<(String, String, String)>> = notes
                .iter()
                .map(|(member, _)| serde_json::from_str(member).ok())
                .collect();
            let ids: Vec<&str> = parsed
                .iter()
                .map(|note| note.as_ref().map_or("", |(_, _, id)| id.as_str()))
                .collect();
            let exists = self.jobs_exist(&ids).await?;
            let mut script = SETTLE_SCRIPT.prepare_invoke();
            script.key(&key);
            for (((member, score), note), exists) in notes.iter().zip(&parsed).zip(exists) {
                let (account, group, id) = note.clone().unwrap_or_default();
                let gone = note.is_some() && !exists;
                script
                    .key(self.index_key(&account, None))
                    .key(self.index_key(&account, Some(&group)))
                    .arg(member)
                    .arg(score)
                    .arg(&id)
                    .arg(u8::from(gone));
            }
            let (settled, removed): (usize, usize) = script.invoke_async(&mut conn).await?;
            outcome.settled += settled;
            outcome.removed += removed;
            if notes.len() < SETTLE_BATCH || settled + removed == 0 {
                return Ok(outcome);
            }
        }
    }

    /// Whether each of `ids` names a stored job (read without decoding: a job stored but unreadable
    /// still exists); one pipeline per shard.
    async fn jobs_exist(&self, ids: &[&str]) -> Result<Vec<bool>> {
        self.ask_by_shard(ids, |shard, shard_ids| async move {
            let mut pipe = redis::pipe();
            for id in &shard_ids {
                // An id outside the alphabet names no job (and never another record's key).
                let id = if is_id(id) { id } else { "" };
                pipe.exists(self.shard_key(shard, &format!("job:{id}")));
            }
            let mut conn = self.conn.clone();
            Ok(pipe.query_async(&mut conn).await?)
        })
        .await
    }

    /// How many index notes wait to be settled.
    pub async fn unsettled_index_entries(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(redis::AsyncCommands::zcard(&mut conn, self.key(UNSETTLED)).await?)
    }
}

/// A note's member: what its entries are to be found by.
fn unsettled_member(job: &Job) -> String {
    serde_json::json!([job.account, job.group, job.id]).to_string()
}
