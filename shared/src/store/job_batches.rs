//! New jobs saved in as few round trips as they can be: one job with its account's job quota
//! checked in the same step ([`Store::create_job`]), or many at a time (`POST /v1/jobs:batch`,
//! [`Store::save_new_jobs`]) in a few variadic commands (`MSET`, `ZADD` with many members). Both
//! write the keys [`Store::save_job`] writes.
//!
//! On one Redis node, or a cluster with one shard, the whole batch is one transaction. On a cluster
//! with shards the account's indexes come first, with their crash-safety notes (as for one job, see
//! [`super::index_entries`]), then one transaction per shard the batch touches, each in its slot.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::Utc;
use redis::Script;

use super::account_groups::{ACCOUNT_GROUPS_LUA, SPLIT_AT_ONCE_MAX};
use super::far_timers::{put_timers, TIMER_LUA};
use super::job_record::stored_job_json;
use super::scripts::{ARM_MANY_LUA, PAIRS_PER_CALL};
use super::timers::{arm_many, unarmed_member, UNARMED};
use super::Store;
use crate::error::{Error, Result};
use crate::model::Job;

/// Creates jobs, each unless its account holds its `max_jobs` already: each job's count and writes
/// in one step, in order, so a create costs one round trip (shared by the creates sent together)
/// and creates racing at the limit cannot pass it. Per job, KEYS: account index, group index, job
/// record, timers, unarmed timers, the account's `one_group`; ARGV: job id, creation (ms), record,
/// next fire (ms, '' for none), unarmed member, max_jobs, group. Returns, per job, -1 when
/// created, else the account's job count; or `{-2, i}` with nothing written when the account of
/// job `i` (from 0) keeps one other group and is too large to split here
/// ([`super::account_groups`]).
///
/// Each account is counted once (`ZCARD`) and its count kept in the script as jobs are let in;
/// the writes are gathered and made at the end, one variadic command per key (`ZADD`, `MSET`):
/// Redis spends more on each command a script calls than on adding one member, so a script of
/// 128 creates makes a handful of calls where it made six a job. A group's index is written only
/// if its account ends the script keeping group indexes.
const CREATE_JOBS: &str = r#"
local created, held, states = {}, {}, {}
local adds, add_keys, records, unarmed, unarmed_keys = {}, {}, {}, {}, {}
local timers, timer_keys = {}, {}
local group_owner = {}
local function push(lists, keys, key, score, member)
  local list = lists[key]
  if not list then
    list = {}
    lists[key] = list
    keys[#keys + 1] = key
  end
  list[#list + 1] = score
  list[#list + 1] = member
end
for i = 0, #KEYS / 6 - 1 do
  local k, a = i * 6, i * 7
  local account = KEYS[k + 1]
  local count = held[account] or redis.call('ZCARD', account)
  if count >= tonumber(ARGV[a + 6]) then
    created[#created + 1] = count
  else
    local state, group = states[account], ARGV[a + 7]
    if not state then
      local kind, one_group = groups_state(KEYS[k + 6], account)
      state = {kind = kind, group = one_group, one = KEYS[k + 6]}
      states[account] = state
    end
    if state.kind == 'E' then
      state.kind, state.group, state.new = 'S', group, true
    elseif state.kind ~= 'M' and state.group ~= group then
      if not state.new and count > SPLIT_AT_ONCE_MAX then return {-2, i} end
      state.kind, state.split = 'M', not state.new
    end
    held[account] = count + 1
    local id, at = ARGV[a + 1], ARGV[a + 2]
    push(adds, add_keys, account, at, id)
    push(adds, add_keys, KEYS[k + 2], at, id)
    group_owner[KEYS[k + 2]] = account
    records[#records + 1] = KEYS[k + 3]
    records[#records + 1] = ARGV[a + 3]
    if ARGV[a + 4] ~= '' then
      -- ms, id, generation (the unarmed member's last part)
      push(timers, timer_keys, KEYS[k + 4], ARGV[a + 4], id)
      local list = timers[KEYS[k + 4]]
      list[#list + 1] = string.match(ARGV[a + 5], '|(%d+)$')
      push(unarmed, unarmed_keys, KEYS[k + 5], ARGV[a + 4], ARGV[a + 5])
    end
    created[#created + 1] = -1
  end
end
for account, state in pairs(states) do
  if state.split then
    split_now(state.one, account, state.group)
  elseif state.new then
    if state.kind == 'S' then
      redis.call('SET', state.one, 'S:' .. state.group)
    else
      redis.call('SET', state.one, 'M:')
    end
  end
end
-- Before the records: a create run again (after a crash) finds its job saved, and its timer
-- wherever it went; a new job's has none to clear.
for _, key in ipairs(timer_keys) do put_timers(key, timers[key], 'unsaved') end
-- At most PAIRS_PER_CALL jobs a call, so every list unpacks within Lua's stack limit.
if #records > 0 then redis.call('MSET', unpack(records)) end
for _, key in ipairs(add_keys) do
  local owner = group_owner[key]
  if not owner or states[owner].kind ~= 'S' then redis.call('ZADD', key, unpack(adds[key])) end
end
for _, key in ipairs(unarmed_keys) do arm_many(key, unarmed[key]) end
return created
"#;
static CREATE_JOBS_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
            "{TIMER_LUA}{ARM_MANY_LUA}{ACCOUNT_GROUPS_LUA}local SPLIT_AT_ONCE_MAX = {SPLIT_AT_ONCE_MAX}\n{CREATE_JOBS}"
        ))
});

/// What one create script did: created (or refused) every job, or nothing because this account
/// must be split first.
enum OneStep<'a> {
    Done(Vec<Created>),
    SplitFirst(&'a str),
}

/// What [`Store::create_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Saved,
    /// Not saved: the account holds this many jobs, its quota or more.
    OverQuota(u64),
}

impl Store {
    /// Saves a new job (generation 1) with its timer unless its account holds `max_jobs` already.
    /// One script where the account's indexes share the job's node or slot; on a cluster with
    /// shards, the count and then [`Store::save_job`]'s two steps.
    pub async fn create_job(&self, job: &Job, max_jobs: u64) -> Result<Created> {
        let created = self.create_jobs(&[(job, max_jobs)]).await?;
        Ok(created.into_iter().next().unwrap_or(Created::Saved))
    }

    /// [`Store::create_job`] for several jobs at once, each with its account's `max_jobs`, in
    /// order (a job's count sees the jobs before it): one script where the accounts' indexes share
    /// the jobs' node or slot; on a cluster with shards, each account counted once and the jobs
    /// let in saved together in [`Store::save_new_jobs`]'s two steps.
    pub async fn create_jobs(&self, jobs: &[(&Job, u64)]) -> Result<Vec<Created>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if self.indexes_apart() {
            return self.create_jobs_apart(jobs).await;
        }
        let mut created = Vec::with_capacity(jobs.len());
        for part in jobs.chunks(PAIRS_PER_CALL) {
            loop {
                match self.create_jobs_in_one_step(part).await? {
                    OneStep::Done(done) => break created.extend(done),
                    OneStep::SplitFirst(account) => self.split_account_groups(account).await?,
                }
            }
        }
        Ok(created)
    }

    /// [`Store::create_jobs`] for at most [`PAIRS_PER_CALL`] jobs whose accounts' indexes
    /// share their node or slot: one script.
    async fn create_jobs_in_one_step<'a>(&self, jobs: &[(&'a Job, u64)]) -> Result<OneStep<'a>> {
        let mut script = CREATE_JOBS_SCRIPT.prepare_invoke();
        for (job, max_jobs) in jobs {
            let next = job
                .next_fire_at
                .map(|next| next.timestamp_millis().to_string())
                .unwrap_or_default();
            script
                .key(self.index_key(&job.account, None))
                .key(self.index_key(&job.account, Some(&job.group)))
                .key(self.owned_key(&job.id, &format!("job:{}", job.id)))
                .key(self.owned_key(&job.id, "timers"))
                .key(self.owned_key(&job.id, UNARMED))
                .key(self.one_group_key(&job.account))
                .arg(&job.id)
                .arg(job.created_at.timestamp_millis())
                .arg(stored_job_json(job)?)
                .arg(next)
                .arg(unarmed_member(&job.id, job.generation))
                .arg(max_jobs)
                .arg(&job.group);
        }
        let mut conn = self.conn.clone();
        let held: Vec<i64> = script.invoke_async(&mut conn).await?;
        if let [-2, index] = held[..] {
            let account = usize::try_from(index)
                .ok()
                .and_then(|index| jobs.get(index))
                .map(|(job, _)| job.account.as_str())
                .ok_or_else(|| Error::internal("the create script named no job to split"))?;
            return Ok(OneStep::SplitFirst(account));
        }
        if held.contains(&-1) {
            self.replicated(&jobs[0].0.id).await?;
        }
        Ok(OneStep::Done(
            held.into_iter()
                .map(|held| match u64::try_from(held) {
                    Ok(held) => Created::OverQuota(held),
                    Err(_) => Created::Saved,
                })
                .collect(),
        ))
    }

    /// [`Store::create_jobs`] where the accounts' indexes are on another node than the jobs: the
    /// count cannot be in the script that saves, so it is read first (as a single create always
    /// did there; creates through several api processes at once may pass a quota by a few).
    async fn create_jobs_apart(&self, jobs: &[(&Job, u64)]) -> Result<Vec<Created>> {
        let mut held_by_account: BTreeMap<&str, u64> = BTreeMap::new();
        let mut created = Vec::with_capacity(jobs.len());
        let mut let_in = Vec::new();
        for (job, max_jobs) in jobs {
            let held = match held_by_account.get_mut(job.account.as_str()) {
                Some(held) => held,
                None => {
                    let count = self.count_jobs(&job.account).await?;
                    held_by_account.entry(&job.account).or_insert(count)
                }
            };
            if *held >= *max_jobs {
                created.push(Created::OverQuota(*held));
                continue;
            }
            *held += 1;
            let_in.push((*job).clone());
            created.push(Created::Saved);
        }
        self.save_new_jobs(&let_in).await?;
        Ok(created)
    }

    /// Saves jobs made by a create (generation 1, none stored before) with their timers. Either
    /// every job of the batch is saved or, on an error, none is visible in a listing; a retried
    /// batch writes the same keys again.
    pub async fn save_new_jobs(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for job in jobs {
            let of_account = groups.entry(&job.account).or_default();
            if !of_account.contains(&job.group.as_str()) {
                of_account.push(&job.group);
            }
        }
        for (account, groups) in &groups {
            self.prepare_groups(account, groups).await?;
        }
        let mut conn = self.conn.clone();
        let mut indexes = redis::pipe();
        indexes.atomic();
        self.index_new_jobs(&mut indexes, jobs);

        let mut by_shard: BTreeMap<u16, Vec<&Job>> = BTreeMap::new();
        for job in jobs {
            by_shard
                .entry(self.shards.of(&job.id))
                .or_default()
                .push(job);
        }
        if self.indexes_apart() {
            let now = Utc::now();
            for job in jobs {
                self.note_unsettled(&mut indexes, job, now);
            }
            indexes.query_async::<()>(&mut conn).await?;
            let mut writes = Vec::with_capacity(by_shard.len());
            for (shard, jobs) in &by_shard {
                let mut pipe = redis::pipe();
                pipe.atomic();
                self.add_shard_writes(&mut pipe, *shard, jobs)?;
                let mut conn = self.conn.clone();
                writes.push(async move { pipe.query_async::<()>(&mut conn).await });
            }
            futures::future::try_join_all(writes).await?;
        } else {
            // One slot (or one node): the indexes and every shard's writes in one transaction.
            let mut pipe = indexes;
            for (shard, jobs) in &by_shard {
                self.add_shard_writes(&mut pipe, *shard, jobs)?;
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let waits = by_shard
            .values()
            .map(|jobs| self.replicated_with_account(&jobs[0].id));
        futures::future::try_join_all(waits).await?;
        Ok(())
    }

    /// Adds every job to its account's index and its group's (where the account keeps one), one
    /// script per account and group.
    fn index_new_jobs(&self, pipe: &mut redis::Pipeline, jobs: &[Job]) {
        let mut entries: BTreeMap<(&str, &str), Vec<(i64, &str)>> = BTreeMap::new();
        for job in jobs {
            entries
                .entry((&job.account, &job.group))
                .or_default()
                .push((job.created_at.timestamp_millis(), &job.id));
        }
        for ((account, group), members) in &entries {
            self.index_jobs(pipe, account, group, members);
        }
    }

    /// Adds to `pipe` the records of `jobs` (all in `shard`) and their timers.
    fn add_shard_writes(
        &self,
        pipe: &mut redis::Pipeline,
        shard: u16,
        jobs: &[&Job],
    ) -> Result<()> {
        let records = jobs
            .iter()
            .map(|job| {
                Ok((
                    self.shard_key(shard, &format!("job:{}", job.id)),
                    stored_job_json(job)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let timers: Vec<(i64, &str, u64)> = jobs
            .iter()
            .filter_map(|job| {
                let next = job.next_fire_at?.timestamp_millis();
                Some((next, job.id.as_str(), job.generation))
            })
            .collect();
        // Before the records, which tell a job saved before (a create run again) from a new one.
        put_timers(pipe, &self.shard_key(shard, "timers"), "unsaved", &timers);
        pipe.mset(&records).ignore();
        if !timers.is_empty() {
            let unarmed: Vec<(i64, String)> = jobs
                .iter()
                .filter_map(|job| {
                    let next = job.next_fire_at?.timestamp_millis();
                    Some((next, unarmed_member(&job.id, job.generation)))
                })
                .collect();
            arm_many(pipe, &self.shard_key(shard, UNARMED), &unarmed);
        }
        Ok(())
    }
}
