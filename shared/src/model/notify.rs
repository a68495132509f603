//! Who is told what about a job's runs (`policies.notify`, and an account's default in
//! `auth.accounts[].notify`): webhook targets, the events each wants, the body's format.
//! Delivery itself is [`crate::notify`] and the reaper's notifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::RunState;
use crate::error::{Error, Result};

/// Something that happened to a run (or, for `paused`, to its job because of the run).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The user's code started.
    Started,
    Succeeded,
    Failed,
    TimedOut,
    /// The spot instance was reclaimed.
    Interrupted,
    /// No instance could be had for the run.
    ProvisionFailed,
    /// `policies.alert_late_secs` passed before the code started.
    Late,
    /// Still running `policies.alert_running_secs` after it started.
    LongRunning,
    /// The run's failure paused its job (`policies.pause_after_failures`).
    Paused,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 9] = [
        NotifyEvent::Started,
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::TimedOut,
        NotifyEvent::Interrupted,
        NotifyEvent::ProvisionFailed,
        NotifyEvent::Late,
        NotifyEvent::LongRunning,
        NotifyEvent::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::TimedOut => "timed_out",
            NotifyEvent::Interrupted => "interrupted",
            NotifyEvent::ProvisionFailed => "provision_failed",
            NotifyEvent::Late => "late",
            NotifyEvent::LongRunning => "long_running",
            NotifyEvent::Paused => "paused",
        }
    }

    /// The event a run's move into `state` is: its code starting, or its ending (a cancel is the
    /// user's own doing and tells nobody).
    pub fn of_state(state: RunState) -> Option<NotifyEvent> {
        match state {
            RunState::Running => Some(NotifyEvent::Started),
            RunState::Succeeded => Some(NotifyEvent::Succeeded),
            RunState::Failed => Some(NotifyEvent::Failed),
            RunState::TimedOut => Some(NotifyEvent::TimedOut),
            RunState::Interrupted => Some(NotifyEvent::Interrupted),
            RunState::ProvisionFailed => Some(NotifyEvent::ProvisionFailed),
            _ => None,
        }
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotifyEvent {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        NotifyEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == s)
            .ok_or_else(|| Error::internal(format!("unknown notify event {s:?}")))
    }
}

/// The body a target gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// The event as JSON (see README, "Notifications").
    #[default]
    Json,
    /// A Slack incoming webhook's `{"text": ...}`.
    Slack,
}

/// One webhook: where, for which events, in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// An http or https URL the outbound rules allow; redirects are not followed.
    pub url: String,
    /// The events it is told of (at least one).
    pub events: Vec<NotifyEvent>,
    #[serde(default)]
    pub format: NotifyFormat,
}

impl NotifyTarget {
    /// The most targets a job (or an account's default) may name.
    pub const MAX_TARGETS: usize = 10;
    pub const MAX_URL_BYTES: usize = 2048;

    /// Whether this target is told of `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }

    /// A short, stable name for the target in what is kept of each attempt (the URL itself may hold
    /// a secret, as a Slack webhook's does): the first 12 hex digits of SHA-256 of format and URL.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{:?} {}", self.format, self.url));
        hex::encode(&digest[..6])
    }

    /// The host the target names, for logs and the run's record of attempts.
    pub fn host(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Checks a list of targets; `field` names it in errors (`policies.notify`).
    pub fn validate_all(targets: &[NotifyTarget], field: &str) -> Result<()> {
        if targets.len() > Self::MAX_TARGETS {
            return Err(Error::invalid(
                field,
                format!("at most {} targets", Self::MAX_TARGETS),
            ));
        }
        for (i, target) in targets.iter().enumerate() {
            let at = |name: &str| format!("{field}[{i}].{name}");
            if target.url.len() > Self::MAX_URL_BYTES
                || crate::outbound::check_url(&target.url).is_err()
            {
                return Err(Error::invalid(
                    at("url"),
                    "must be an http or https URL of at most 2048 bytes",
                ));
            }
            if target.events.is_empty() {
                return Err(Error::invalid(at("events"), "names no event"));
            }
            for (j, event) in target.events.iter().enumerate() {
                if target.events[..j].contains(event) {
                    return Err(Error::invalid(at("events"), format!("names {event} twice")));
                }
            }
            if targets[..i].iter().any(|other| other.key() == target.key()) {
                return Err(Error::invalid(
                    at("url"),
                    "the same URL and format as an earlier target",
                ));
            }
        }
        Ok(())
    }
}

/// How one attempt to tell a target of an event went, as kept on the run (the newest 100).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotificationAttempt {
    pub event: NotifyEvent,
    /// The target's [`NotifyTarget::key`] (its URL is not repeated here: it may hold a secret).
    pub target: String,
    /// The host the target names.
    pub host: String,
    /// 1 for the first attempt of this event at this target.
    pub attempt: u32,
    pub at: chrono::DateTime<chrono::Utc>,
    pub outcome: AttemptOutcome,
    /// The target's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, when it did without an answer (or the outbound rules refused the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// A 2xx answer: the target has it.
    Delivered,
    /// No answer, or one worth trying again (408, 429, 5xx): another attempt follows.
    WillRetry,
    /// The last attempt allowed failed, or the answer says another would too: given up.
    GaveUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, events: &[NotifyEvent]) -> NotifyTarget {
        NotifyTarget {
            url: url.into(),
            events: events.to_vec(),
            format: NotifyFormat::Json,
        }
    }

    #[test]
    fn events_read_and_print_by_their_names() {
        for event in NotifyEvent::ALL {
            assert_eq!(event.as_str().parse::<NotifyEvent>().unwrap(), event);
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{event}\""));
        }
        assert!("cancelled".parse::<NotifyEvent>().is_err());
        assert_eq!(NotifyEvent::of_state(RunState::Cancelled), None);
        assert_eq!(
            NotifyEvent::of_state(RunState::Running),
            Some(NotifyEvent::Started)
        );
    }

    #[test]
    fn bad_targets_are_refused_with_the_field_named() {
        let ok = target("https://hooks.example.com/x", &[NotifyEvent::Failed]);
        assert!(NotifyTarget::validate_all(std::slice::from_ref(&ok), "n").is_ok());
        let cases = [
            (vec![target("ftp://x/", &[NotifyEvent::Failed])], "n[0].url"),
            (vec![target("https://x/", &[])], "n[0].events"),
            (
                vec![target(
                    "https://x/",
                    &[NotifyEvent::Failed, NotifyEvent::Failed],
                )],
                "n[0].events",
            ),
            (vec![ok.clone(), ok.clone()], "n[1].url"),
            (vec![ok.clone(); 11], "n"),
        ];
        for (targets, field) in cases {
            let err = NotifyTarget::validate_all(&targets, "n").unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err:?}");
        }
    }

    #[test]
    fn a_targets_key_is_stable_and_hides_its_url() {
        let slack = NotifyTarget {
            format: NotifyFormat::Slack,
            ..target(
                "https://hooks.slack.com/services/T/B/secret",
                &[NotifyEvent::Failed],
            )
        };
        assert_eq!(slack.key(), slack.clone().key());
        assert_eq!(slack.key().len(), 12);
        assert!(!slack.key().contains("secret"));
        assert_ne!(
            slack.key(),
            NotifyTarget {
                format: NotifyFormat::Json,
                ..slack.clone()
            }
            .key()
        );
        assert_eq!(slack.host(), "hooks.slack.com");
    }
}
