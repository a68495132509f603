//! The notification outbox: what is to be told of runs, kept in Redis until each target has it.
//!
//! A run whose job or account asks for notifications is recorded with the events they want in its
//! `notify` field (`,started,failed,`: [`Store::notify_events`]). The step that moves such a run
//! into one of those events' state (see
//! [`Store::end_run`]), marks it late or long running, or pauses its job for it, adds
//! `{run id}|{event}` to its shard's `notify:outbox` in the same step, scored by when it is due (ms):
//! an event cannot happen without its notification being noted, and a repeated report adds nothing.
//!
//! A notifier takes due entries ([`Store::take_due_notifications`]), holding each for a lease by
//! scoring it at the lease's end, so a notifier that dies holding one lets another deliver it then.
//! After a round it writes, in one step, what each target got ([`NotifyRound`]): the per-target
//! state in the run's `notify:{event}` field, each attempt appended to its `notifications` field
//! (the newest [`KEPT_ATTEMPTS`]), and the entry taken off or scored for its next round.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};

use super::Store;
use crate::error::Result;
use crate::model::{Job, NotifyEvent};

/// Notifications to deliver, per shard, scored by when each is due (ms).
pub(super) const OUTBOX: &str = "notify:outbox";

/// Attempts kept on a run (the newest).
pub const KEPT_ATTEMPTS: usize = 100;

/// The outbox member of `event` on run `run_id`.
pub(super) fn outbox_member(run_id: &str, event: NotifyEvent) -> String {
    format!("{run_id}|{event}")
}

/// Adds `member` (`{run id}|{event}`) due at `now_ms` to `outbox` if the run's `notify` field
/// names the event and the member is not there yet. Shared by the scripts that make events.
pub(super) const NOTE_EVENT_LUA: &str = r#"
local function note_event(run, outbox, member, now_ms)
  if member == '' then return end
  local wanted = redis.call('HGET', run, 'notify')
  local event = string.match(member, '|(.+)$')
  if wanted and event and string.find(wanted, ',' .. event .. ',', 1, true) then
    redis.call('ZADD', outbox, 'NX', now_ms, member)
  end
end
"#;

/// KEYS: outbox. ARGV: now (ms), lease end (ms), limit. Takes the due members, each scored at the
/// lease's end.
const TAKE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"#;
static TAKE_DUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_DUE));

/// KEYS: run, outbox. ARGV: member, state field, state, attempts kept, next due (ms, '' when done),
/// then the attempts to append (JSON lines). Writes a round's outcome, unless the run is gone.
const FINISH_ROUND: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local lines = {}
local kept = redis.call('HGET', KEYS[1], 'notifications')
if kept then
  for line in string.gmatch(kept, '[^\n]+') do lines[#lines + 1] = line end
end
for i = 6, #ARGV do lines[#lines + 1] = ARGV[i] end
local first = math.max(1, #lines - tonumber(ARGV[4]) + 1)
redis.call('HSET', KEYS[1], 'notifications', table.concat(lines, '\n', first, #lines))
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
end
return 1
"#;
static FINISH_ROUND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH_ROUND));

/// A notification due: an event of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueNotification {
    pub run_id: String,
    pub event: NotifyEvent,
}

/// What a notifier's round on one notification did, to be written in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRound {
    /// The per-target state after the round (JSON), kept in the run's `notify:{event}` field.
    pub state: String,
    /// Each attempt of the round, as a JSON line for the run's `notifications`.
    pub attempts: Vec<String>,
    /// When the next round is due; `None` when every target has it or has been given up.
    pub next_due: Option<DateTime<Utc>>,
}

impl Store {
    /// Accounts with default notifications (`auth.accounts[].notify`), and the events they want.
    pub fn with_notifying_accounts(
        mut self,
        accounts: impl IntoIterator<Item = (String, Vec<NotifyEvent>)>,
    ) -> Store {
        self.notifying_accounts = std::sync::Arc::new(accounts.into_iter().collect());
        self
    }

    /// The events runs of `job` are to be noted for, as their `notify` field holds them
    /// (`,started,failed,`): those its own targets and its account's default ones want. `None` when
    /// nobody is told of anything.
    pub fn notify_events(&self, job: &Job) -> Option<String> {
        let from_account = self.notifying_accounts.get(&job.account);
        let wanted: Vec<NotifyEvent> = NotifyEvent::ALL
            .into_iter()
            .filter(|event| {
                job.policies
                    .notify
                    .iter()
                    .any(|target| target.wants(*event))
                    || from_account.is_some_and(|events| events.contains(event))
            })
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let names: Vec<&str> = wanted.iter().map(|event| event.as_str()).collect();
        Some(format!(",{},", names.join(",")))
    }

    /// Whether runs of `job` are noted for any event ([`Store::notify_events`]).
    pub fn notifies(&self, job: &Job) -> bool {
        self.notify_events(job).is_some()
    }

    /// Takes up to `limit` notifications due at `now` from each shard, each held until
    /// `lease_until` (when another notifier may take it if this one has not finished it).
    pub async fn take_due_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueNotification>> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let members: Vec<String> = TAKE_DUE_SCRIPT
                    .key(self.shard_key(shard, OUTBOX))
                    .arg(now.timestamp_millis())
                    .arg(lease_until.timestamp_millis())
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(members)
            })
            .await?;
        let mut due = Vec::new();
        for member in per_shard.into_iter().flatten() {
            let parsed = member
                .split_once('|')
                .and_then(|(run_id, event)| Some((run_id.to_string(), event.parse().ok()?)));
            match parsed {
                Some((run_id, event)) => due.push(DueNotification { run_id, event }),
                None => {
                    tracing::warn!(member, "unreadable notification dropped");
                    let mut conn = self.conn.clone();
                    let _: () = conn.zrem(self.owned_key(&member, OUTBOX), &member).await?;
                }
            }
        }
        Ok(due)
    }

    /// The per-target state of `event` on `run_id`, as the last round left it.
    pub async fn notification_state(
        &self,
        run_id: &str,
        event: NotifyEvent,
    ) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn
            .hget(
                self.owned_key(run_id, &format!("run:{run_id}")),
                format!("notify:{event}"),
            )
            .await?)
    }

    /// Writes a round's outcome on `due` ([`NotifyRound`]), or drops the notification of a run gone.
    pub async fn finish_notification_round(
        &self,
        due: &DueNotification,
        round: &NotifyRound,
    ) -> Result<()> {
        let run_id = &due.run_id;
        let mut script = FINISH_ROUND_SCRIPT.prepare_invoke();
        script
            .key(self.owned_key(run_id, &format!("run:{run_id}")))
            .key(self.owned_key(run_id, OUTBOX))
            .arg(outbox_member(run_id, due.event))
            .arg(format!("notify:{}", due.event))
            .arg(&round.state)
            .arg(KEPT_ATTEMPTS)
            .arg(
                round
                    .next_due
                    .map_or_else(String::new, |at| at.timestamp_millis().to_string()),
            );
        for attempt in &round.attempts {
            script.arg(attempt);
        }
        let mut conn = self.conn.clone();
        let _: i64 = script.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Drops a notification (its run is gone, or it has no target left).
    pub async fn drop_notification(&self, due: &DueNotification) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zrem(
                self.owned_key(&due.run_id, OUTBOX),
                outbox_member(&due.run_id, due.event),
            )
            .await?;
        Ok(())
    }

    /// Notifications not delivered yet, over every shard (held ones included).
    pub async fn notifications_outstanding(&self) -> Result<u64> {
        let per_shard = self
            .on_every_shard(|shard| async move {
                let mut conn = self.conn.clone();
                let count: u64 = conn.zcard(self.shard_key(shard, OUTBOX)).await?;
                Ok(count)
            })
            .await?;
        Ok(per_shard.into_iter().sum())
    }
}
