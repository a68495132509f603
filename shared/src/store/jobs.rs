//! Jobs: each job's record and the indexes that list an account's jobs.
//!
//! Keys, under the prefix `p` (the job's record under its shard's, [`super::shards`]):
//! - `p:job:{id}`: the job as JSON ([`super::job_record`]: `enabled` and `generation` lead, defaults
//!   left out)
//! - `p:account:{a}:jobs`, `p:account:{a}:group:{g}:jobs`: job ids scored by creation time (an
//!   account that uses one group keeps no group index: [`super::account_groups`])
//! - `p:alias:{scope}:{alias}`: a compatibility surface's name for a job; `p:set:{name}`: plain sets
//!   the surfaces keep
//!
//! Saving a job writes its timer too (see [`super::timers`]), in the same transaction. On a cluster
//! with shards the account's indexes are in another slot than the job, so they are a step of their
//! own ([`Store::indexes_apart`]): written before the job is saved and removed after it is deleted,
//! so that a crash between the two leaves at most an index entry naming no job (listings skip it, the reaper's sweep removes it: see
//! [`super::index_entries`]), never a job no listing shows.

use chrono::{TimeZone, Utc};
use redis::AsyncCommands;

use super::far_timers::{drop_timer, far_bucket_key, parked_ms, put_timers};
use super::job_record::{decode_stored_job, stored_job_json};
use super::quarantine::JobRecord;
use super::timers::{arm_many, unarmed_member, UNARMED};
use super::Store;
use crate::error::{Error, Result};
use crate::ids::is_id;
use crate::model::Job;

impl Store {
    /// Stores a job (new or replaced) and its next fire time in one transaction. A job whose
    /// `next_fire_at` is `None` has no timer.
    pub async fn save_job(&self, job: &Job) -> Result<()> {
        self.save_job_from_group(job, None).await
    }

    /// [`Store::save_job`] for a job that moves out of `old_group`: it leaves that group's index
    /// in the same step as it enters its new one, so no crash leaves it in neither.
    pub async fn save_job_from_group(&self, job: &Job, old_group: Option<&str>) -> Result<()> {
        let old_group = old_group.filter(|old| *old != job.group);
        if old_group.is_some() {
            // The account may hold this job's old group alone; a new job's group is the
            // create's to check.
            self.prepare_groups(&job.account, &[&job.group]).await?;
        }
        let mut conn = self.conn.clone();
        let json = stored_job_json(job)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let index = |pipe: &mut redis::Pipeline| {
            let created = job.created_at.timestamp_millis();
            self.index_jobs(pipe, &job.account, &job.group, &[(created, &job.id)]);
            // After the indexing, which may copy the old group's index from the account's.
            if let Some(old) = old_group {
                pipe.zrem(self.index_key(&job.account, Some(old)), &job.id)
                    .ignore();
            }
        };
        if self.indexes_apart() {
            let mut first = redis::pipe();
            first.atomic();
            index(&mut first);
            self.note_unsettled(&mut first, job, Utc::now());
            first.query_async::<()>(&mut conn).await?;
        } else {
            index(&mut pipe);
        }
        pipe.set(self.owned_key(&job.id, &format!("job:{}", job.id)), json)
            .ignore();
        let timers = self.owned_key(&job.id, "timers");
        match job.next_fire_at {
            Some(next) => put_timers(
                &mut pipe,
                &timers,
                "any",
                &[(next.timestamp_millis(), &job.id, job.generation)],
            ),
            None => drop_timer(&mut pipe, &timers, &job.id),
        }
        // The timer for RabbitMQ: the pump arms it when it comes within the horizon. A replaced job's
        // earlier timer is withdrawn; one already armed is dropped as stale when it fires.
        let unarmed = self.owned_key(&job.id, UNARMED);
        if job.generation > 1 {
            pipe.zrem(&unarmed, unarmed_member(&job.id, job.generation - 1))
                .ignore();
        }
        let member = unarmed_member(&job.id, job.generation);
        match job.next_fire_at {
            Some(next) => arm_many(&mut pipe, &unarmed, &[(next.timestamp_millis(), member)]),
            None => {
                pipe.zrem(&unarmed, member).ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await?;
        self.replicated_with_account(&job.id).await
    }

    /// Deletes a job, its timer, its runs and their logs. Timers still in flight find no job and drop.
    pub async fn delete_job(&self, job: &Job) -> Result<()> {
        self.remove_job(job, None).await
    }

    /// Deletes a job and its timer like [`Store::delete_job`], but leaves its runs and their logs
    /// readable by id for `ttl_secs` (a job that deleted itself at the end of its schedule). Their
    /// logs stop counting toward the account's history quota at once.
    pub async fn delete_job_keeping_runs(&self, job: &Job, ttl_secs: u64) -> Result<()> {
        self.remove_job(job, Some(ttl_secs)).await
    }

    async fn remove_job(&self, job: &Job, keep_runs_secs: Option<u64>) -> Result<()> {
        let mut run_ids = self.job_run_ids(&job.id, 0).await?;
        // Array fires' copies go (or expire) with their parents.
        let arrays = self.array_leftovers(&job.id, &run_ids).await?;
        run_ids.extend(arrays.copies);
        let mut conn = self.conn.clone();
        let backfills_key = self.owned_key(&job.id, &format!("job:{}:backfills", job.id));
        let backfill_ids: Vec<String> = conn.zrange(&backfills_key, 0, -1).await?;
        // The logs' bytes come off the account's history total as they go.
        let mut log_bytes: i64 = 0;
        if !run_ids.is_empty() {
            let mut lengths = redis::pipe();
            for run_id in &run_ids {
                lengths.strlen(self.owned_key(&job.id, &format!("run:{run_id}:log")));
            }
            let lengths: Vec<i64> = lengths.query_async(&mut conn).await?;
            log_bytes = lengths.iter().sum();
        }
        let shard = self.shards.of(&job.id);
        let mut pipe = redis::pipe();
        drop_timer(&mut pipe, &self.shard_key(shard, "timers"), &job.id);
        if log_bytes > 0 {
            pipe.decr(self.history_bytes_key(shard, &job.account), log_bytes)
                .ignore();
        }
        pipe.atomic()
            .del(self.shard_key(shard, &format!("job:{}", job.id)))
            .ignore()
            .zrem(
                self.shard_key(shard, UNARMED),
                unarmed_member(&job.id, job.generation),
            )
            .ignore()
            .del(self.shard_key(shard, &super::costs::job_cost_key(&job.id)))
            .ignore()
            .del(self.shard_key(shard, &super::pauses::failures_key(&job.id)))
            .ignore()
            .del(self.shard_key(shard, &super::finite::fired_key(&job.id)))
            .ignore()
            .del(self.shard_key(shard, &super::queues::queue_key(&job.id)))
            .ignore()
            .srem(self.shard_key(shard, super::queues::QUEUES), &job.id)
            .ignore()
            .del(&backfills_key)
            .ignore();
        for entry in &arrays.sweep_entries {
            pipe.srem(self.arrays_key(&job.id), entry).ignore();
        }
        for id in &backfill_ids {
            for part in ["", ":line", ":live"] {
                pipe.del(self.shard_key(shard, &format!("backfill:{id}{part}")))
                    .ignore();
            }
            pipe.srem(
                self.shard_key(shard, "backfills"),
                format!("{}/{id}", job.id),
            )
            .ignore();
        }
        let runs_key = self.shard_key(shard, &format!("job:{}:runs", job.id));
        let run_keys = run_ids
            .iter()
            .flat_map(|run_id| {
                [
                    self.shard_key(shard, &format!("run:{run_id}")),
                    self.shard_key(shard, &format!("run:{run_id}:log")),
                ]
            })
            .chain(arrays.keys);
        match keep_runs_secs {
            None => {
                pipe.del(&runs_key).ignore();
                for key in run_keys {
                    pipe.del(key).ignore();
                }
            }
            Some(ttl) => {
                let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
                pipe.expire(&runs_key, ttl).ignore();
                for key in run_keys {
                    pipe.expire(key, ttl).ignore();
                }
            }
        }
        let unindex = |pipe: &mut redis::Pipeline| {
            pipe.zrem(self.index_key(&job.account, None), &job.id)
                .ignore()
                .zrem(self.index_key(&job.account, Some(&job.group)), &job.id)
                .ignore();
        };
        if self.indexes_apart() {
            // Noted first, so that a crash after the job is gone leaves its entries to the sweep.
            let mut note = redis::pipe();
            self.note_unsettled(&mut note, job, Utc::now());
            note.query_async::<()>(&mut conn).await?;
            pipe.query_async::<()>(&mut conn).await?;
            let mut last = redis::pipe();
            last.atomic();
            unindex(&mut last);
            self.forget_unsettled(&mut last, job);
            last.query_async::<()>(&mut conn).await?;
        } else {
            unindex(&mut pipe);
            pipe.query_async::<()>(&mut conn).await?;
        }
        self.replicated_with_account(&job.id).await
    }

    /// A job with its next fire time, or `None`; a record that cannot be read back is an
    /// internal error (see [`Store::read_job`] to tell it apart).
    pub async fn get_job(&self, id: &str) -> Result<Option<Job>> {
        match self.read_job(id).await? {
            JobRecord::Found(job) => Ok(Some(*job)),
            JobRecord::Missing => Ok(None),
            JobRecord::Unreadable(why) => Err(Error::internal(format!(
                "stored job {id} cannot be read: {why}"
            ))),
        }
    }

    /// A job with its next fire time: found, missing, or stored but unreadable (and why), which the
    /// provisioner quarantines ([`super::quarantine`]) rather than failing on it for ever.
    pub async fn read_job(&self, id: &str) -> Result<JobRecord> {
        if !is_id(id) {
            return Ok(JobRecord::Missing);
        }
        let mut conn = self.conn.clone();
        let timers = self.owned_key(id, "timers");
        let (raw, next, parked): (Option<String>, Option<f64>, Option<String>) = redis::pipe()
            .get(self.owned_key(id, &format!("job:{id}")))
            .zscore(&timers, id)
            .hget(far_bucket_key(&timers, id), id)
            .query_async(&mut conn)
            .await?;
        let next = next
            .map(|ms| ms as i64)
            .or(parked.as_deref().and_then(parked_ms));
        let Some(raw) = raw else {
            return Ok(JobRecord::Missing);
        };
        Ok(match decode_stored_job(id, &raw) {
            Ok(mut job) => {
                job.next_fire_at = next.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
                JobRecord::Found(Box::new(job))
            }
            Err(err) => JobRecord::Unreadable(err.to_string()),
        })
    }

    /// Several jobs at once (one `MGET` per shard they are in, the shards at once), in the order asked, without their
    /// next fire times.
    pub async fn get_jobs(&self, ids: &[&str]) -> Result<Vec<Option<Job>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // An id outside the alphabet names no job (and never another record's key).
        let valid: Vec<&str> = ids.iter().copied().filter(|id| is_id(id)).collect();
        let found: Vec<Option<String>> = self
            .ask_by_shard(&valid, |shard, shard_ids| async move {
                let keys: Vec<String> = shard_ids
                    .iter()
                    .map(|id| self.shard_key(shard, &format!("job:{id}")))
                    .collect();
                let mut conn = self.conn.clone();
                Ok(redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?)
            })
            .await?;
        let mut found = found.into_iter();
        let raws = ids.iter().map(|id| {
            if is_id(id) {
                found.next().flatten()
            } else {
                None
            }
        });
        // One job that cannot be read back (written by a bug, or by hand) must not fail a listing:
        // it is logged and left out.
        Ok(ids
            .iter()
            .zip(raws)
            .map(|(id, raw)| {
                let raw = raw?;
                decode_stored_job(id, &raw)
                    .inspect_err(|err| tracing::error!(job_id = %id, error = %err, "stored job unreadable; left out"))
                    .ok()
            })
            .collect())
    }

    /// An account's jobs (of one group, if given), newest first, `limit` at most (0: all), read in
    /// batches; a job that cannot be read back is left out (see [`Store::get_jobs`]).
    pub async fn list_jobs(
        &self,
        account: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.list_jobs_from(account, group, 0, limit).await
    }

    /// A page of an account's jobs, newest first, with their next fire times: `limit` of them (0:
    /// all) after the first `offset`.
    pub async fn list_jobs_from(
        &self,
        account: &str,
        group: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        let ids = self
            .list_job_ids_from(account, group, offset, limit)
            .await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let mut found: Vec<Job> = self.get_jobs(&refs).await?.into_iter().flatten().collect();
            self.fill_next_fires(&mut found).await?;
            jobs.extend(found);
        }
        Ok(jobs)
    }

    /// A page of an account's jobs (of one group, if given) that `keep` accepts, newest first: up to
    /// `limit` of them, read from the index at `offset` on, `scan` entries at most; with the index
    /// offset the next page starts at, if more may follow. What a listing that shows only some
    /// jobs pages with (seed 003's, of one-shot jobs).
    pub async fn list_jobs_matching(
        &self,
        account: &str,
        group: Option<&str>,
        offset: usize,
        limit: usize,
        scan: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<(Vec<Job>, Option<usize>)> {
        let mut page = Vec::new();
        let mut position = offset;
        let end = offset.saturating_add(scan.max(limit + 1));
        while position < end {
            let chunk = (end - position).min(500);
            let ids = self
                .list_job_ids_from(account, group, position, chunk)
                .await?;
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            for (i, job) in self.get_jobs(&refs).await?.into_iter().enumerate() {
                match job {
                    Some(job) if keep(&job) && page.len() == limit => {
                        self.fill_next_fires(&mut page).await?;
                        return Ok((page, Some(position + i)));
                    }
                    Some(job) if keep(&job) => page.push(job),
                    _ => {}
                }
            }
            position += ids.len();
            if ids.len() < chunk {
                self.fill_next_fires(&mut page).await?;
                return Ok((page, None));
            }
        }
        // Scanned as far as allowed: the next page goes on from here.
        self.fill_next_fires(&mut page).await?;
        Ok((page, Some(position)))
    }

    /// Sets each job's `next_fire_at` from its timer (one pipeline per shard, the shards at once).
    async fn fill_next_fires(&self, jobs: &mut [Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
        // Near or parked far (see [`super::far_timers`]): both asked, one answers.
        let scores: Vec<(Option<f64>, Option<String>)> = self
            .ask_by_shard(&ids, |shard, shard_ids| async move {
                let timers = self.shard_key(shard, "timers");
                let mut pipe = redis::pipe();
                for id in &shard_ids {
                    pipe.zscore(&timers, id)
                        .hget(far_bucket_key(&timers, id), id);
                }
                let mut conn = self.conn.clone();
                // The answers come flat, read two by two.
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        for (job, (near, parked)) in jobs.iter_mut().zip(scores) {
            let ms = near
                .map(|ms| ms as i64)
                .or(parked.as_deref().and_then(parked_ms));
            job.next_fire_at = ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        }
        Ok(())
    }

    /// An account's job ids (of one group, if given), newest first.
    pub async fn list_job_ids(
        &self,
        account: &str,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.list_job_ids_from(account, group, 0, limit).await
    }

    async fn list_job_ids_from(
        &self,
        account: &str,
        group: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>> {
        let start = offset as isize;
        let stop = if limit == 0 {
            -1
        } else {
            start + limit as isize - 1
        };
        match group {
            Some(group) => self.list_group_ids(account, group, start, stop).await,
            None => {
                let mut conn = self.conn.clone();
                Ok(conn
                    .zrevrange(self.index_key(account, None), start, stop)
                    .await?)
            }
        }
    }

    /// Names a job by a surface's own key (seed 004's image and date, say), unless the name is taken.
    /// Returns the job already holding the name, if any.
    pub async fn claim_alias(
        &self,
        scope: &str,
        alias: &str,
        job_id: &str,
    ) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let key = self.key(&format!("alias:{scope}:{alias}"));
        let set: bool = redis::cmd("SET")
            .arg(&key)
            .arg(job_id)
            .arg("NX")
            .query_async::<Option<String>>(&mut conn)
            .await?
            .is_some();
        if set {
            return Ok(None);
        }
        Ok(conn.get(&key).await?)
    }

    /// The job a surface's own key names.
    pub async fn alias(&self, scope: &str, alias: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn
            .get(self.key(&format!("alias:{scope}:{alias}")))
            .await?)
    }

    /// Moves an alias to another job (after the one it named was replaced).
    pub async fn set_alias(&self, scope: &str, alias: &str, job_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .set(self.key(&format!("alias:{scope}:{alias}")), job_id)
            .await?;
        Ok(())
    }

    /// Adds a member to a named set (bookkeeping such as the instances a surface controls).
    pub async fn set_add(&self, name: &str, member: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.sadd(self.key(&format!("set:{name}")), member).await?;
        Ok(())
    }

    /// Removes a member; returns whether it was there.
    pub async fn set_remove(&self, name: &str, member: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn.srem(self.key(&format!("set:{name}")), member).await?;
        Ok(removed > 0)
    }

    pub async fn set_members(&self, name: &str) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.key(&format!("set:{name}"))).await?)
    }

    /// How many jobs an account holds.
    pub async fn count_jobs(&self, account: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(conn.zcard(self.index_key(account, None)).await?)
    }
}
