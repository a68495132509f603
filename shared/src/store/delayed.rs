//! Durable delayed work and what the reconciler heals from.
//!
//! A scheduled fire's truth is its job's entry in `timers`. A retry or a run-now has no such entry, so
//! it gets one of its own in `timers:delayed`, written in the same Redis step that ends the run it
//! retries (see [`Store::end_run`]) or that asks for the run ([`Store::schedule_fire`]); the pump hands
//! it to RabbitMQ from `timers:unarmed` like any timer, and it leaves `timers:delayed` once its run is
//! recorded. A crash between two steps, or a wiped broker, therefore delays such work and loses none:
//! [`Store::requeue_overdue`] puts whatever is overdue and unfired back in the pump's hands.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::far_timers::TIMER_LUA;
use super::notifications::{outbox_member, NOTE_EVENT_LUA, OUTBOX};
use super::scripts::{JOB_STATE_LUA, LIVE_RUNS, QUARANTINE_LUA, TRIM_ENDED_LUA, UNARMED};
use super::timers::{is_delayed, millis, parse_timer_member, timer_member};
use super::{Moved, Store, UnarmedTimer};
use crate::alerts::RunAlert;
use crate::error::Result;
use crate::messages::FireMessage;
use crate::model::{NotifyEvent, Run, RunState};

/// Retries and run-nows not yet recorded as runs, scored by due time (ms).
pub(super) const DELAYED: &str = "timers:delayed";

/// Runs that ended with chained jobs to start (`policies.on_success`, `on_failure`), scored by the
/// instant the chained fires take (ms): a run leaves it once they are scheduled.
const CHAINS: &str = "chains:pending";

/// Compare-and-set of a run's state that also keeps the live-run index, arms a retry, notes the
/// chained jobs to start and the notification of the move, in one step. KEYS: run, live runs,
/// delayed, unarmed, chains to start, notification outbox. ARGV: expected, new, run id, '1' if the
/// new state ends the run, the retry's member ('' for none), its due time (ms), the chain's instant
/// (ms, '' for none), the notification's member ('' for none), now (ms), then field/value pairs.
const RUN_CAS: &str = r#"
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
if current ~= ARGV[1] then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 10))
note_event(KEYS[1], KEYS[6], ARGV[8], ARGV[9])
if ARGV[4] == '1' then redis.call('ZREM', KEYS[2], ARGV[3]) end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
end
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[3]) end
return {1, current}
"#;

static RUN_CAS_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{NOTE_EVENT_LUA}{RUN_CAS}")));

/// Arms a relaunch of a run that never started, counting it on the run, in one step. KEYS: run,
/// delayed, unarmed. ARGV: the state the run must still be in, the most relaunches allowed, the
/// relaunch's member, its due time (ms and RFC 3339), why. A run still `booting` (its instance, since
/// terminated, never started the container) or `running` an HTTP action whose provisioner went silent
/// goes back to `pending` without its instance, container, heartbeat and secret, so nothing the old
/// instance's agent might still say counts. Returns the run's relaunches so far, -1 if its state moved
/// meanwhile, -2 if it has had every relaunch allowed.
const RELAUNCH: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return -1 end
if tonumber(redis.call('HGET', KEYS[1], 'relaunches') or '0') >= tonumber(ARGV[2]) then return -2 end
if ARGV[1] == 'booting' or ARGV[1] == 'running' then
  redis.call('HDEL', KEYS[1], 'instance_id', 'container_id', 'heartbeat_at', 'secret_hash')
  redis.call('HSET', KEYS[1], 'state', 'pending')
end
local count = redis.call('HINCRBY', KEYS[1], 'relaunches', 1)
local reasons = redis.call('HGET', KEYS[1], 'relaunch_reasons')
if reasons then reasons = reasons .. '\n' .. ARGV[6] else reasons = ARGV[6] end
redis.call('HSET', KEYS[1], 'relaunch_reasons', reasons, 'relaunch_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return count
"#;

static RELAUNCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELAUNCH));

/// KEYS: the run, the notification outbox. ARGV: the alert's field, its time, its notification's
/// member, now (ms). Sets the field only on a run not ended, noting the notification. 1 if set.
const MARK_ALERT: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not unfinished(state) then return 0 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
note_event(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
return 1
"#;
static MARK_ALERT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{TRIM_ENDED_LUA}{NOTE_EVENT_LUA}{MARK_ALERT}")));

/// What [`Store::relaunch_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relaunch {
    /// Armed; the run has been relaunched this many times now.
    Armed(u32),
    /// The run has had every relaunch allowed: it is to end `provision_failed`.
    Exhausted,
    /// The run moved on meanwhile (its launch got going, or it ended): nothing done.
    Moved,
}

/// One page of the reconciler's scan. KEYS: the set scanned (`timers` or `timers:delayed`), unarmed.
/// ARGV: key prefix, overdue bound (ms), offset, page size, 'scheduled' or 'delayed'.
/// Returns {scanned, requeued, dropped, quarantined}: fires still wanted go back to unarmed; those of
/// jobs gone, disabled or changed leave the set; a job whose record cannot be read is quarantined
/// (its timer set aside with the reason, see [`super::quarantine`]) instead of failing the page.
const REQUEUE_OVERDUE: &str = r#"
local prefix, mode, now = ARGV[1], ARGV[5], ARGV[6]
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', ARGV[3], ARGV[4])
local requeued, dropped, quarantined = 0, 0, 0
for i = 1, #rows, 2 do
  local member, score = rows[i], rows[i + 1]
  local job_id, wanted = member, nil
  if mode == 'delayed' then job_id, wanted = string.match(member, '^([^|]+)|(%d+)|') end
  local raw = job_id and redis.call('GET', prefix .. ':job:' .. job_id)
  local enabled, generation = false, nil
  local readable = true
  if raw then
    local ok, first, second = pcall(job_state, raw)
    if ok then enabled, generation = first, second else readable = false end
  end
  if not readable then
    quarantine(prefix .. ':quarantine', prefix .. ':timers', job_id, 'stored job cannot be read', now)
    if mode == 'delayed' then redis.call('ZREM', KEYS[1], member) end
    quarantined = quarantined + 1
  elseif not enabled or (wanted and wanted ~= generation) then
    if mode == 'delayed' or not raw then
      redis.call('ZREM', KEYS[1], member)
      dropped = dropped + 1
    end
  else
    local unarmed = member
    if mode == 'scheduled' then unarmed = member .. '|' .. generation end
    redis.call('ZADD', KEYS[2], score, unarmed)
    requeued = requeued + 1
  end
end
return {#rows / 2, requeued, dropped, quarantined}
"#;

static REQUEUE_OVERDUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{JOB_STATE_LUA}{TIMER_LUA}{QUARANTINE_LUA}{REQUEUE_OVERDUE}"
    ))
});

/// What one reconcile pass found overdue and put back in the pump's hands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Scheduled fires overdue and unfired.
    pub scheduled: usize,
    /// Retries and run-nows overdue and unrecorded.
    pub delayed: usize,
    /// Entries of jobs since deleted, disabled or changed, removed.
    pub dropped: usize,
    /// Jobs whose record cannot be read, set aside ([`super::quarantine`]).
    pub quarantined: usize,
}

/// A run not yet ended, as the live-run index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckRun {
    pub run_id: String,
    pub recorded_at: DateTime<Utc>,
}

impl Store {
    /// Moves a run to `to` like [`Store::advance_run`] and, in the same step, arms `retry` (its next
    /// attempt, due at the given time) durably: a crash just after the move cannot lose the retry.
    /// With `chain_at`, the run is noted as having chained jobs to start at that instant (see
    /// [`Store::pending_chains`]) in the same step.
    pub async fn end_run(
        &self,
        id: &str,
        to: RunState,
        fields: &[(&str, String)],
        retry: Option<(&FireMessage, DateTime<Utc>)>,
        chain_at: Option<DateTime<Utc>>,
    ) -> Result<Moved<RunState>> {
        // A run is in its job's shard, and so is the retry it arms.
        let keys = [
            self.owned_key(id, &format!("run:{id}")),
            self.owned_key(id, LIVE_RUNS),
            self.owned_key(id, DELAYED),
            self.owned_key(id, UNARMED),
            self.owned_key(id, CHAINS),
            self.owned_key(id, OUTBOX),
        ];
        let (member, due) = match retry {
            Some((fire, due)) => (timer_member(fire), due.timestamp_millis().to_string()),
            None => (String::new(), String::new()),
        };
        // A retried run names its retry's timer, for what waits on it to see whether it is
        // still to come (an array, see `super::arrays`).
        let with_retry;
        let fields = match retry {
            Some(_) => {
                with_retry = [fields, &[("retry", member.clone())]].concat();
                &with_retry[..]
            }
            None => fields,
        };
        let extra = [
            id.to_string(),
            if to.is_terminal() { "1" } else { "0" }.to_string(),
            member,
            due,
            chain_at.map_or_else(String::new, |at| at.timestamp_millis().to_string()),
            NotifyEvent::of_state(to).map_or_else(String::new, |event| outbox_member(id, event)),
            Utc::now().timestamp_millis().to_string(),
        ];
        let moved = self
            .advance_hash(&RUN_CAS_SCRIPT, &keys, &extra, "run", id, to, fields)
            .await?;
        self.replicated(id).await?;
        Ok(moved)
    }

    /// Launches `run` again at `due` (the provisioner finds it by its fire's marker), as the same
    /// attempt, if it is still in the state the caller found it in and has had fewer than
    /// `max_relaunches`; counted on the run with `why`, in the same step as the fire is armed. A
    /// `booting` run goes back to `pending` (its instance must be terminated first).
    pub async fn relaunch_run(
        &self,
        run: &Run,
        generation: u64,
        due: DateTime<Utc>,
        max_relaunches: u32,
        why: &str,
    ) -> Result<Relaunch> {
        let fire = FireMessage {
            job_id: run.job_id.clone(),
            generation,
            scheduled_at: run.scheduled_at,
            attempt: run.attempt,
            manual: false,
            relaunch: true,
            interruptions: run.interruptions,
            // A backfill's run or an array's copy has no marker of its own: it is launched by its id.
            run_id: (run.backfill.is_some() || run.array_parent().is_some())
                .then(|| run.id.clone()),
        };
        let mut conn = self.conn.clone();
        let count: i64 = RELAUNCH_SCRIPT
            .key(self.owned_key(&run.id, &format!("run:{}", run.id)))
            .key(self.owned_key(&run.id, DELAYED))
            .key(self.owned_key(&run.id, UNARMED))
            .arg(run.state.as_str())
            .arg(max_relaunches)
            .arg(timer_member(&fire))
            .arg(due.timestamp_millis())
            .arg(due.to_rfc3339())
            .arg(why)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(&run.id).await?;
        Ok(match count {
            -1 => Relaunch::Moved,
            -2 => Relaunch::Exhausted,
            n => Relaunch::Armed(u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    /// Records a fire outside the schedule (a run-now) for the pump to hand over at `due`.
    pub async fn schedule_fire(&self, fire: &FireMessage, due: DateTime<Utc>) -> Result<()> {
        let member = timer_member(fire);
        let score = due.timestamp_millis();
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .zadd(self.owned_key(&fire.job_id, DELAYED), &member, score)
            .ignore()
            .zadd(self.owned_key(&fire.job_id, UNARMED), &member, score)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        self.replicated(&fire.job_id).await
    }

    /// Lets go of a retry or run-now once its run is recorded (or it turned out stale).
    pub async fn forget_fire(&self, fire: &FireMessage) -> Result<()> {
        if !is_delayed(fire) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: () = conn
            .zrem(self.owned_key(&fire.job_id, DELAYED), timer_member(fire))
            .await?;
        Ok(())
    }

    /// The retries and run-nows waiting, with their due times (soonest first, over every shard).
    pub async fn delayed_fires(&self, limit: usize) -> Result<Vec<UnarmedTimer>> {
        let mut fires: Vec<UnarmedTimer> = self
            .lowest_in_every_shard(DELAYED, limit)
            .await?
            .into_iter()
            .filter_map(|(member, score)| parse_timer_member(&member, &score.to_string()))
            .collect();
        fires.sort_by_key(|timer| timer.due);
        fires.truncate(limit);
        Ok(fires)
    }

    /// Puts every fire due before `before` and not yet fired (scheduled timers, retries, run-nows)
    /// back in `timers:unarmed` for the pump, in every shard: see [`Store::requeue_overdue_in`].
    pub async fn requeue_overdue(
        &self,
        before: DateTime<Utc>,
        page: usize,
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for shard in self.shards.all() {
            let found = self.requeue_overdue_in(shard, before, page).await?;
            report.scheduled += found.scheduled;
            report.delayed += found.delayed;
            report.dropped += found.dropped;
            report.quarantined += found.quarantined;
        }
        Ok(report)
    }

    /// [`Store::requeue_overdue`] in one shard, `page` at a time (each page one script, so Redis is
    /// never held for long). A fire handed over twice is still recorded once.
    pub async fn requeue_overdue_in(
        &self,
        shard: u16,
        before: DateTime<Utc>,
        page: usize,
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let page = page.max(1);
        for (set, mode) in [("timers", "scheduled"), (DELAYED, "delayed")] {
            let mut offset = 0usize;
            loop {
                let mut conn = self.conn.clone();
                let (scanned, requeued, dropped, quarantined): (usize, usize, usize, usize) =
                    REQUEUE_OVERDUE_SCRIPT
                        .key(self.shard_key(shard, set))
                        .key(self.shard_key(shard, UNARMED))
                        .arg(self.shards.prefix(shard))
                        .arg(before.timestamp_millis())
                        .arg(offset)
                        .arg(page)
                        .arg(mode)
                        .arg(Utc::now().to_rfc3339())
                        .invoke_async(&mut conn)
                        .await?;
                match mode {
                    "scheduled" => report.scheduled += requeued,
                    _ => report.delayed += requeued,
                }
                report.dropped += dropped;
                report.quarantined += quarantined;
                if scanned < page {
                    break;
                }
                // Dropped and quarantined entries left the set: the next page starts that much
                // earlier.
                offset += scanned - dropped - quarantined;
            }
        }
        Ok(report)
    }

    /// Every run of the live-run indexes that no instance speaks for (or that ended or is gone,
    /// for the index to forget), oldest first within each shard, up to `scan` index entries per
    /// shard looked at: the whole index is walked in pages with one pipeline each (the runs' state
    /// and instance read, nothing more), so runs on instances, however many and old, never hide the
    /// runs behind them from the stuck-run sweep.
    pub async fn live_runs_without_instance(&self, scan: usize) -> Result<Vec<StuckRun>> {
        const PAGE: usize = 2000;
        let per_shard = self
            .on_every_shard(|shard| async move {
                let index = self.shard_key(shard, LIVE_RUNS);
                let mut found = Vec::new();
                let mut offset = 0;
                while offset < scan {
                    let mut conn = self.conn.clone();
                    let rows: Vec<(String, f64)> = conn
                        .zrange_withscores(&index, offset as isize, (offset + PAGE) as isize - 1)
                        .await?;
                    // An empty pipeline is an error to redis-rs ("empty command"): an empty shard
                    // (or page) has nothing to read.
                    if rows.is_empty() {
                        break;
                    }
                    let mut pipe = redis::pipe();
                    for (run_id, _) in &rows {
                        pipe.hget(
                            self.shard_key(shard, &format!("run:{run_id}")),
                            "instance_id",
                        );
                    }
                    let instances: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                    for ((run_id, ms), instance) in rows.iter().zip(instances) {
                        if instance.is_some() {
                            continue;
                        }
                        if let Some(recorded_at) = millis(*ms as i64) {
                            found.push(StuckRun {
                                run_id: run_id.clone(),
                                recorded_at,
                            });
                        }
                    }
                    if rows.len() < PAGE {
                        break;
                    }
                    offset += PAGE;
                }
                Ok(found)
            })
            .await?;
        let mut runs: Vec<StuckRun> = per_shard.into_iter().flatten().collect();
        runs.sort_by_key(|run| run.recorded_at);
        Ok(runs)
    }

    /// Runs whose chained jobs were not started yet, noted before `older_than`, with the instant
    /// their chained fires take (what the sweep finishes after a crash).
    pub async fn pending_chains(
        &self,
        older_than: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>> {
        self.members_due(CHAINS, older_than, 1000).await
    }

    /// The run's chained jobs were started: it leaves the pending set.
    pub async fn chain_started(&self, run_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let () = conn.zrem(self.owned_key(run_id, CHAINS), run_id).await?;
        self.replicated(run_id).await
    }

    /// The runs of the live-run index, `scan` at most per shard (what the alert sweep reads).
    pub async fn live_run_ids(&self, scan: usize) -> Result<Vec<String>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let ids: Vec<String> = conn
                    .zrange(self.shard_key(shard, LIVE_RUNS), 0, scan as isize - 1)
                    .await?;
                Ok(ids)
            })
            .await?;
        Ok(per_shard.into_iter().flatten().collect())
    }

    /// Marks a run with an alert (`alert:{kind}` = `at`) unless it has it, or has ended meanwhile:
    /// `true` if this call marked it, so each alert is counted once however many sweeps see it.
    pub async fn mark_run_alert(
        &self,
        run_id: &str,
        alert: RunAlert,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let event = match alert {
            RunAlert::Late => NotifyEvent::Late,
            RunAlert::LongRunning => NotifyEvent::LongRunning,
        };
        let mut conn = self.conn.clone();
        let marked: i64 = MARK_ALERT_SCRIPT
            .key(self.owned_key(run_id, &format!("run:{run_id}")))
            .key(self.owned_key(run_id, OUTBOX))
            .arg(format!("alert:{}", alert.as_str()))
            .arg(at.to_rfc3339())
            .arg(outbox_member(run_id, event))
            .arg(at.timestamp_millis())
            .invoke_async(&mut conn)
            .await?;
        self.replicated(run_id).await?;
        Ok(marked == 1)
    }

    /// Takes a run out of the live-run index (it ended, or is gone).
    pub async fn forget_live_run(&self, run_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.zrem(self.owned_key(run_id, LIVE_RUNS), run_id).await?;
        Ok(())
    }
}
