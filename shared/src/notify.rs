//! Notifications, the pure part: which targets an event goes to, the body each gets, its signature,
//! what an answer means and when to try again. The outbox is [`crate::store::Store`]'s
//! (`store/notifications.rs`); the reaper's notifier delivers.
//!
//! Delivery is at least once: every body carries an `id` (`{run id}.{event}`) that stays the same
//! over attempts and targets, for the receiver to drop what it has seen.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::config::NotifySettings;
use crate::model::{
    AttemptOutcome, Job, NotificationAttempt, NotifyEvent, NotifyFormat, NotifyTarget, Run,
    RunState,
};

/// The header that carries the body's signature: `sha256=` and the hex HMAC-SHA256 of the body
/// under the account's `notify_secret`.
pub const SIGNATURE_HEADER: &str = "X-Spot-Signature";
/// The header that carries the notification's id (the body's `id`).
pub const DELIVERY_HEADER: &str = "X-Spot-Delivery";
/// The header that names the event.
pub const EVENT_HEADER: &str = "X-Spot-Event";

/// The targets `event` goes to: the job's own, then its account's default ones, each once (by
/// [`NotifyTarget::key`]). A job deleted since has only its account's.
pub fn targets_for(
    job: Option<&Job>,
    account_default: &[NotifyTarget],
    event: NotifyEvent,
) -> Vec<NotifyTarget> {
    let own = job.map(|job| job.policies.notify.as_slice()).unwrap_or(&[]);
    let mut targets: Vec<NotifyTarget> = Vec::new();
    for target in own.iter().chain(account_default) {
        if target.wants(event) && !targets.iter().any(|t| t.key() == target.key()) {
            targets.push(target.clone());
        }
    }
    targets
}

/// How far one target is with one event: kept on the run between rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetProgress {
    pub attempts: u32,
    /// Delivered, or given up.
    pub done: bool,
}

/// Every target's progress with one event, by target key.
pub type EventProgress = BTreeMap<String, TargetProgress>;

/// The notification's id, the same for every attempt and target.
pub fn delivery_id(run_id: &str, event: NotifyEvent) -> String {
    format!("{run_id}.{event}")
}

/// When the event happened, as the run (or, for `paused`, the job) recorded it.
pub fn event_time(event: NotifyEvent, run: &Run, job: Option<&Job>) -> Option<DateTime<Utc>> {
    match event {
        NotifyEvent::Late => run.late_alert_at,
        NotifyEvent::LongRunning => run.long_running_alert_at,
        NotifyEvent::Paused => job
            .and_then(|job| job.paused.as_ref())
            .map(|pause| pause.at),
        NotifyEvent::Started => run.transitions.get(&RunState::Running).copied(),
        _ => run.transitions.get(&run.state).copied(),
    }
}

/// The body `target` gets for `event` of `run`.
pub fn body(
    format: NotifyFormat,
    event: NotifyEvent,
    run: &Run,
    job: Option<&Job>,
    at: DateTime<Utc>,
) -> Vec<u8> {
    let value = match format {
        NotifyFormat::Json => json!({
            "id": delivery_id(&run.id, event),
            "event": event,
            "at": at,
            "account": run.account,
            "job": {
                "id": run.job_id,
                "name": job.map(|job| job.name.as_str()).unwrap_or(""),
                "group": job.map(|job| job.group.as_str()).unwrap_or(""),
                "paused": job.and_then(|job| job.paused.as_ref()),
            },
            "run": {
                "id": run.id,
                "state": run.state,
                "attempt": run.attempt,
                "scheduled_at": run.scheduled_at,
                "exit_code": run.exit_code,
                "error": run.error,
                "instance_id": run.instance_id,
            },
        }),
        NotifyFormat::Slack => json!({ "text": slack_text(event, run, job) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One line a person reads in a Slack channel.
fn slack_text(event: NotifyEvent, run: &Run, job: Option<&Job>) -> String {
    let name = match job
        .map(|job| job.name.as_str())
        .filter(|name| !name.is_empty())
    {
        Some(name) => format!("\"{name}\" ({})", run.job_id),
        None => run.job_id.clone(),
    };
    let what = match event {
        NotifyEvent::Started => "started".to_string(),
        NotifyEvent::Succeeded => "succeeded".to_string(),
        NotifyEvent::Failed => match (run.exit_code, &run.error) {
            (Some(code), _) => format!("failed with exit code {code}"),
            (None, Some(error)) => format!("failed: {error}"),
            (None, None) => "failed".to_string(),
        },
        NotifyEvent::TimedOut => "timed out".to_string(),
        NotifyEvent::Interrupted => "was interrupted (its spot instance was reclaimed)".to_string(),
        NotifyEvent::ProvisionFailed => "could not get an instance".to_string(),
        NotifyEvent::Late => "is late: its code has not started".to_string(),
        NotifyEvent::LongRunning => "is still running past its alert".to_string(),
        NotifyEvent::Paused => "failed once too often: the job is paused".to_string(),
    };
    format!(
        "spot-scheduler: job {name}, run {} (attempt {}, scheduled {}) {what}",
        run.id,
        run.attempt,
        run.scheduled_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: the value of [`SIGNATURE_HEADER`].
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What an attempt's answer (or its absence) means: 2xx delivered; 408, 429, 5xx or no answer
/// worth another attempt; anything else (a 4xx, a redirect, which is not followed) never better.
pub fn outcome_of(status: Option<u16>, attempt: u32, max_attempts: u32) -> AttemptOutcome {
    let retryable = match status {
        Some(200..=299) => return AttemptOutcome::Delivered,
        Some(408 | 429) | Some(500..=599) | None => true,
        Some(_) => false,
    };
    if retryable && attempt < max_attempts {
        AttemptOutcome::WillRetry
    } else {
        AttemptOutcome::GaveUp
    }
}

/// The wait after attempt `attempt` (1, 2, ...) failed: `backoff_secs`, doubling, up to
/// `backoff_max_secs`.
pub fn backoff(attempt: u32, settings: &NotifySettings) -> chrono::Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let secs = settings
        .backoff_secs
        .saturating_mul(1u64 << exponent)
        .min(settings.backoff_max_secs);
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// The record of an attempt kept on the run.
pub fn attempt_record(
    event: NotifyEvent,
    target: &NotifyTarget,
    attempt: u32,
    outcome: AttemptOutcome,
    status: Option<u16>,
    error: Option<String>,
) -> NotificationAttempt {
    NotificationAttempt {
        event,
        target: target.key(),
        host: target.host(),
        attempt,
        at: Utc::now(),
        outcome,
        status,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Policies;

    fn target(url: &str, events: &[NotifyEvent], format: NotifyFormat) -> NotifyTarget {
        NotifyTarget {
            url: url.into(),
            events: events.to_vec(),
            format,
        }
    }

    fn job_notifying(targets: Vec<NotifyTarget>) -> Job {
        Job::dummy_for_tests(Policies {
            notify: targets,
            ..Policies::default()
        })
    }

    #[test]
    fn an_event_goes_to_the_jobs_and_the_accounts_targets_that_want_it_once_each() {
        let failures = target(
            "https://a.example/x",
            &[NotifyEvent::Failed],
            NotifyFormat::Json,
        );
        let everything = target(
            "https://b.example/y",
            &NotifyEvent::ALL,
            NotifyFormat::Slack,
        );
        let job = job_notifying(vec![failures.clone(), everything.clone()]);
        let account = [everything.clone()];
        assert_eq!(
            targets_for(Some(&job), &account, NotifyEvent::Failed),
            [failures, everything.clone()]
        );
        assert_eq!(
            targets_for(Some(&job), &account, NotifyEvent::Started),
            std::slice::from_ref(&everything)
        );
        assert_eq!(
            targets_for(None, &account, NotifyEvent::Paused),
            [everything]
        );
        assert!(targets_for(None, &[], NotifyEvent::Failed).is_empty());
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body_under_the_secret() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn answers_decide_between_delivered_another_attempt_and_giving_up() {
        use AttemptOutcome::*;
        assert_eq!(outcome_of(Some(204), 1, 3), Delivered);
        for status in [None, Some(408), Some(429), Some(500), Some(503)] {
            assert_eq!(outcome_of(status, 1, 3), WillRetry, "{status:?}");
            assert_eq!(outcome_of(status, 3, 3), GaveUp, "{status:?}");
        }
        for status in [Some(301), Some(400), Some(401), Some(404)] {
            assert_eq!(outcome_of(status, 1, 3), GaveUp, "{status:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let mut settings = crate::config::Settings::defaults().notify;
        settings.backoff_secs = 5;
        settings.backoff_max_secs = 60;
        let waits: Vec<i64> = (1..=6)
            .map(|attempt| backoff(attempt, &settings).num_seconds())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(backoff(u32::MAX, &settings).num_seconds(), 60);
    }

    #[test]
    fn bodies_carry_the_id_and_slacks_a_line_of_text() {
        let run = Run {
            id: "r1".into(),
            job_id: "j1".into(),
            account: "acme".into(),
            attempt: 2,
            state: RunState::Failed,
            exit_code: Some(3),
            ..Run::default()
        };
        let at = Utc::now();
        let json: serde_json::Value = serde_json::from_slice(&body(
            NotifyFormat::Json,
            NotifyEvent::Failed,
            &run,
            None,
            at,
        ))
        .unwrap();
        assert_eq!(json["id"], "r1.failed");
        assert_eq!(json["event"], "failed");
        assert_eq!(json["run"]["exit_code"], 3);
        assert_eq!(json["run"]["attempt"], 2);
        let slack: serde_json::Value = serde_json::from_slice(&body(
            NotifyFormat::Slack,
            NotifyEvent::Failed,
            &run,
            None,
            at,
        ))
        .unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("failed with exit code 3"), "{text}");
        assert_eq!(slack.as_object().unwrap().len(), 1, "only text");
    }
}
