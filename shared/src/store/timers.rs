//! Timers: when each job fires next, and the fires the pump has yet to hand to RabbitMQ.
//!
//! Keys, under the prefix `p` of each shard ([`super::shards`]), for the jobs of that shard:
//! - `p:timers`: job ids scored by their next fire time (ms): what a fire moves on and the reconciler
//!   re-arms from
//! - `p:timers:unarmed`: fires the pump has yet to hand over (it does so shortly before they are due),
//!   scored by due time: `{job}|{generation}` for a scheduled fire, the longer member of
//!   `p:timers:delayed` ([`super::delayed`]) for a retry, a run-now or a relaunch; both are written
//!   and read back here ([`timer_member`], [`parse_timer_member`])
//! - `p:timers:unarmed:until`: the instant (ms) up to which the pump has taken the scheduled fires of
//!   `p:timers` into its hands. A scheduled fire due later is not in `p:timers:unarmed` at all: the
//!   pump finds it in `p:timers` when its round's bound passes it ([`Store::claim_unarmed_in`]), and
//!   a timer set at or before the instant is armed at once ([`super::scripts::ARM_LUA`]). So a job
//!   waiting for next month is one sorted-set entry, not two, and no fire falls between the two
//!   sets: the bound moves and the timers are written in atomic steps that both read it.
//!
//! And one key under the store's own prefix, not a shard's: `p:timers:broker_marked`, set once a
//! provisioner has left its marker in RabbitMQ ([`crate::broker::Broker::leave_state_marker`]): from
//! then on, a broker found without the marker has lost timers handed to it, where one never marked
//! may simply be new.

use std::sync::LazyLock;

use chrono::{DateTime, TimeZone, Utc};
use redis::{AsyncCommands, Script};

use super::far_timers::TIMER_LUA;
pub(super) use super::scripts::{unarmed_member, UNARMED};
use super::scripts::{ARM_LUA, ARM_MANY, JOB_STATE_LUA};
use super::Store;
use crate::error::Result;
use crate::messages::FireMessage;

const BROKER_MARKED: &str = "timers:broker_marked";

/// The member naming a fire in `timers:unarmed` (and, for a delayed one, in `timers:delayed`): a
/// scheduled fire is `{job}|{generation}` (its instant is the score); a retry or a run-now also carries
/// its instant, attempt and kind, `{job}|{generation}|{instant ms}|{attempt}|{kind}`, where the kind is
/// `r` for a retry, `m` for a run-now and `l` for a relaunch of a run that never started; `b`, the
/// launch of a run by its id (a backfill's), adds the run's id.
pub(super) fn timer_member(fire: &FireMessage) -> String {
    if let Some(run_id) = &fire.run_id {
        // The launch of a run by its id (a backfill's): kind `b`, the run last.
        return format!(
            "{}|{}|{}|{}|b|{run_id}",
            fire.job_id,
            fire.generation,
            fire.scheduled_at.timestamp_millis(),
            fire.attempt,
        );
    }
    if is_delayed(fire) {
        let kind = if fire.relaunch {
            'l'
        } else if fire.manual {
            'm'
        } else {
            'r'
        };
        let member = format!(
            "{}|{}|{}|{}|{kind}",
            fire.job_id,
            fire.generation,
            fire.scheduled_at.timestamp_millis(),
            fire.attempt,
        );
        // Interruptions before this attempt, only when there were any (members of older versions
        // have none).
        match fire.interruptions {
            0 => member,
            n => format!("{member}|{n}"),
        }
    } else {
        format!("{}|{}", fire.job_id, fire.generation)
    }
}

/// Whether a fire is a retry or a run-now (kept in `timers:delayed`) rather than a scheduled one.
pub fn is_delayed(fire: &FireMessage) -> bool {
    fire.attempt > 1 || fire.manual || fire.relaunch
}

pub(super) fn millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Adds to a transaction the arming of scheduled fires of one shard (due ms, member), each put in
/// `unarmed` only if it is near ([`ARM_MANY`]). `EVAL` with the source rather than `EVALSHA`: a
/// transaction cannot load a script a restarted Redis has forgotten.
pub(super) fn arm_many(pipe: &mut redis::Pipeline, unarmed: &str, fires: &[(i64, String)]) {
    // Lua's `unpack` takes a few thousand values at most.
    for chunk in fires.chunks(1000) {
        let cmd = pipe.cmd("EVAL").arg(ARM_MANY.as_str()).arg(1).arg(unarmed);
        for (due, member) in chunk {
            cmd.arg(due).arg(member);
        }
        cmd.ignore();
    }
}

/// Reads a member of `timers:unarmed` back, with its score (the due time, ms).
pub(super) fn parse_timer_member(member: &str, score: &str) -> Option<UnarmedTimer> {
    let due = millis(score.parse::<f64>().ok()? as i64)?;
    let parts: Vec<&str> = member.split('|').collect();
    let fire = match parts.as_slice() {
        [job_id, generation] => FireMessage::scheduled(job_id, generation.parse().ok()?, due),
        [job_id, generation, instant, attempt, "b", run_id] => FireMessage {
            scheduled_at: millis(instant.parse().ok()?)?,
            attempt: attempt.parse().ok()?,
            relaunch: true,
            run_id: Some(run_id.to_string()),
            ..FireMessage::scheduled(job_id, generation.parse().ok()?, due)
        },
        [job_id, generation, instant, attempt, kind, rest @ ..] if rest.len() <= 1 => FireMessage {
            job_id: job_id.to_string(),
            generation: generation.parse().ok()?,
            scheduled_at: millis(instant.parse().ok()?)?,
            attempt: attempt.parse().ok()?,
            manual: *kind == "m",
            relaunch: *kind == "l",
            interruptions: match rest {
                [n] => n.parse().ok()?,
                _ => 0,
            },
            run_id: None,
        },
        _ => return None,
    };
    Some(UnarmedTimer { fire, due })
}

/// Takes the fires of one shard due by a bound for the pump. KEYS: unarmed, timers. ARGV: bound (ms),
/// limit, the shard's key prefix. First the scheduled fires of `timers` past `unarmed:until` and due
/// by the bound join the unarmed set, `limit` at a time (and the rest of the last millisecond, so
/// that `until` can stand on it), each under its job's current generation; a job gone, disabled or
/// unreadable is left to the reconciler, which drops or quarantines it. Then up to `limit` of the
/// unarmed set are taken off it and returned, with their scores.
const CLAIM: &str = r#"
local unarmed, timers, bound, limit, prefix = KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local until_key = unarmed .. ':until'
local armed_until = tonumber(redis.call('GET', until_key) or '')
if not armed_until then
  -- The first round: every timer set so far is in the unarmed set already.
  redis.call('SET', until_key, bound)
elseif armed_until < bound then
  local rows = redis.call('ZRANGEBYSCORE', timers, '(' .. armed_until, bound, 'WITHSCORES', 'LIMIT', 0, limit)
  local reached = bound
  if #rows >= 2 * limit then
    reached = tonumber(rows[#rows])
    rows = redis.call('ZRANGEBYSCORE', timers, '(' .. armed_until, reached, 'WITHSCORES')
  end
  for i = 1, #rows, 2 do
    local raw = redis.call('GET', prefix .. ':job:' .. rows[i])
    if raw then
      local read, enabled, generation = pcall(job_state, raw)
      if read and enabled then redis.call('ZADD', unarmed, rows[i + 1], rows[i] .. '|' .. generation) end
    end
  end
  redis.call('SET', until_key, reached)
end
local due = redis.call('ZRANGEBYSCORE', unarmed, '-inf', bound, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do redis.call('ZREM', unarmed, due[i]) end
return due
"#;

static CLAIM_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{JOB_STATE_LUA}{CLAIM}")));

/// A timer the pump took to arm: the fire it delivers, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnarmedTimer {
    pub fire: crate::messages::FireMessage,
    /// When to deliver it: the scheduled instant, or a retry's time after its backoff.
    pub due: DateTime<Utc>,
}

impl Store {
    /// Members of the shards' sorted set `name`, scored by a time in milliseconds, at or before
    /// `before`: `limit` at most from each shard, the earliest first over all of them, `limit` in all.
    pub(super) async fn members_due(
        &self,
        name: &str,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let rows: Vec<(String, f64)> = conn
                    .zrangebyscore_limit_withscores(
                        self.shard_key(shard, name),
                        "-inf",
                        before.timestamp_millis(),
                        0,
                        limit as isize,
                    )
                    .await?;
                Ok(rows)
            })
            .await?;
        let mut due: Vec<(String, DateTime<Utc>)> = per_shard
            .into_iter()
            .flatten()
            .filter_map(|(member, ms)| Some((member, millis(ms as i64)?)))
            .collect();
        due.sort_by_key(|(_, at)| *at);
        due.truncate(limit);
        Ok(due)
    }

    /// Jobs whose next fire time is at or before `before`, oldest first (over every shard), near or
    /// parked far ([`super::far_timers`]).
    pub async fn due_timers(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>> {
        let mut due = self.members_due("timers", before, limit).await?;
        let parked = self
            .on_every_shard(|shard| self.parked_due(shard, before.timestamp_millis(), limit))
            .await?;
        due.extend(
            parked
                .into_iter()
                .flatten()
                .filter_map(|(id, ms)| Some((id, millis(ms)?))),
        );
        due.sort_by_key(|(_, at)| *at);
        due.truncate(limit);
        Ok(due)
    }

    /// Sets or clears a job's next fire time, but only if it is still `expected` and the job is still
    /// at `generation` (so a slow worker never overwrites a newer schedule: an edit landing between a
    /// fire's record and this move may have armed the very same instant for its new generation), and
    /// leaves the new time for the pump to arm.
    pub async fn advance_timer(
        &self,
        job_id: &str,
        generation: u64,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        const SCRIPT: &str = r#"
local raw = redis.call('GET', KEYS[3])
if not raw then return 0 end
local _, stored_generation = job_state(raw)
if stored_generation ~= ARGV[5] then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1])
else
  put_timer(KEYS[1], ARGV[1], ARGV[3], ARGV[5], 'near')
  arm(KEYS[2], ARGV[3], ARGV[4])
end
return 1
"#;
        static ADVANCE_TIMER: LazyLock<Script> =
            LazyLock::new(|| Script::new(&format!("{JOB_STATE_LUA}{TIMER_LUA}{ARM_LUA}{SCRIPT}")));
        let mut conn = self.conn.clone();
        let next = next
            .map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default();
        let moved: i64 = ADVANCE_TIMER
            .key(self.owned_key(job_id, "timers"))
            .key(self.owned_key(job_id, UNARMED))
            .key(self.owned_key(job_id, &format!("job:{job_id}")))
            .arg(job_id)
            .arg(expected.timestamp_millis())
            .arg(next)
            .arg(unarmed_member(job_id, generation))
            .arg(generation)
            .invoke_async(&mut conn)
            .await?;
        self.replicated(job_id).await?;
        Ok(moved == 1)
    }

    /// [`Store::claim_unarmed_in`] over every shard, shard by shard, up to `limit` in all.
    pub async fn claim_unarmed(
        &self,
        bound: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<UnarmedTimer>> {
        let mut claimed = Vec::new();
        for shard in self.shards.all() {
            if claimed.len() >= limit {
                break;
            }
            let room = limit - claimed.len();
            claimed.extend(self.claim_unarmed_in(shard, bound, room).await?);
        }
        Ok(claimed)
    }

    /// Takes up to `limit` timers of `shard` due at or before `bound` off its unarmed set, for the
    /// pump to arm. Atomic, so several pumps never take the same timer. Scheduled fires that came
    /// within `bound` since the last round are taken from `timers` first (see the module's notes).
    pub async fn claim_unarmed_in(
        &self,
        shard: u16,
        bound: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<UnarmedTimer>> {
        let mut conn = self.conn.clone();
        let rows: Vec<String> = CLAIM_SCRIPT
            .key(self.shard_key(shard, UNARMED))
            .key(self.shard_key(shard, "timers"))
            .arg(bound.timestamp_millis())
            .arg(limit.max(1))
            .arg(self.shards.prefix(shard))
            .invoke_async(&mut conn)
            .await?;
        Ok(rows
            .chunks(2)
            .filter_map(|pair| {
                let [member, score] = pair else { return None };
                parse_timer_member(member, score)
            })
            .collect())
    }

    /// Whether a provisioner has left its marker in RabbitMQ before (see the keys above).
    pub async fn broker_marked(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.key(BROKER_MARKED)).await?)
    }

    /// Notes that a provisioner left its marker in RabbitMQ.
    pub async fn note_broker_marked(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.set(self.key(BROKER_MARKED), 1).await?;
        Ok(())
    }

    /// How many fires wait for the pump to hand them over (in every shard).
    pub async fn unarmed_count(&self) -> Result<u64> {
        let counts = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                Ok(conn.zcard::<_, u64>(self.shard_key(shard, UNARMED)).await?)
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    /// Puts timers the pump could not arm back, for its next round.
    pub async fn unclaim(&self, timers: &[UnarmedTimer]) -> Result<()> {
        if timers.is_empty() {
            return Ok(());
        }
        for (shard, timers) in self.by_shard(timers, |t| &t.fire.job_id) {
            let mut conn = self.conn.clone();
            let items: Vec<(i64, String)> = timers
                .iter()
                .map(|t| (t.due.timestamp_millis(), timer_member(&t.fire)))
                .collect();
            let _: () = conn
                .zadd_multiple(self.shard_key(shard, UNARMED), &items)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_read_back_as_the_fires_they_name() {
        let at = millis(1_800_000_000_123).unwrap();
        let scheduled = FireMessage::scheduled("job1", 4, at);
        let member = timer_member(&scheduled);
        assert_eq!(member, "job1|4");
        let back = parse_timer_member(&member, "1800000000123").unwrap();
        assert_eq!((back.fire, back.due), (scheduled, at));

        let retry = FireMessage {
            attempt: 3,
            ..FireMessage::scheduled("job1", 4, at)
        };
        let due = millis(1_800_000_060_000).unwrap();
        let member = timer_member(&retry);
        assert_eq!(member, "job1|4|1800000000123|3|r");
        let back = parse_timer_member(&member, "1800000060000").unwrap();
        assert_eq!((back.fire, back.due), (retry.clone(), due));

        let relaunch = FireMessage {
            relaunch: true,
            ..FireMessage::scheduled("job1", 4, at)
        };
        assert!(timer_member(&relaunch).ends_with("|1|l"));
        let after_interruptions = FireMessage {
            attempt: 3,
            interruptions: 2,
            ..retry.clone()
        };
        let member = timer_member(&after_interruptions);
        assert_eq!(member, "job1|4|1800000000123|3|r|2");
        assert_eq!(
            parse_timer_member(&member, "1800000060000").unwrap().fire,
            after_interruptions
        );
        assert_eq!(
            parse_timer_member(&timer_member(&relaunch), "1800000060000")
                .unwrap()
                .fire,
            relaunch
        );
        let manual = FireMessage {
            manual: true,
            ..FireMessage::scheduled("job1", 4, at)
        };
        assert!(timer_member(&manual).ends_with("|1|m"));
        assert_eq!(
            parse_timer_member(&timer_member(&manual), "1800000000123")
                .unwrap()
                .fire,
            manual
        );
        assert!(parse_timer_member("job1|x", "1").is_none());
        assert!(parse_timer_member("a|1|2", "1").is_none());
    }
}
