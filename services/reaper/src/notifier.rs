//! The notifier: delivers the notifications the outbox holds (see `spot_shared::notify` and the
//! store's `notifications`), each signed with its account's secret, checked against the outbound
//! rules, retried with backoff, every attempt kept on its run. Every reaper runs one; the outbox's
//! leases keep two from taking the same notification at once, and one that dies holding some lets
//! another deliver them after the lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use spot_shared::config::{NotifySettings, Settings};
use spot_shared::model::{AttemptOutcome, NotifyTarget};
use spot_shared::notify::{self, EventProgress};
use spot_shared::outbound::{check_url, checked_addresses, OutboundSettings};
use spot_shared::store::{DueNotification, NotifyRound, Store};
use spot_shared::Result;

/// What an account brings to its notifications.
#[derive(Clone, Default)]
struct AccountNotify {
    secret: Option<SecretString>,
    default_targets: Vec<NotifyTarget>,
}

#[derive(Clone)]
pub struct Notifier {
    store: Store,
    settings: Arc<NotifySettings>,
    outbound: Arc<OutboundSettings>,
    accounts: Arc<HashMap<String, AccountNotify>>,
}

/// What one call of [`Notifier::deliver_due`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Notifications taken from the outbox.
    pub taken: usize,
    /// Attempts that delivered, failed (to be tried again) and gave up.
    pub delivered: usize,
    pub failed: usize,
    pub gave_up: usize,
}

impl Notifier {
    pub fn new(settings: &Settings, store: Store) -> Notifier {
        let accounts = settings
            .auth
            .accounts
            .iter()
            .map(|account| {
                let notify = AccountNotify {
                    secret: account.notify_secret().cloned(),
                    default_targets: account.notify.clone(),
                };
                (account.name.clone(), notify)
            })
            .collect();
        Notifier {
            store,
            settings: Arc::new(settings.notify.clone()),
            outbound: Arc::new(settings.outbound.clone()),
            accounts: Arc::new(accounts),
        }
    }

    /// Takes the notifications due now (a batch from each shard) and makes one round of attempts
    /// on each, `notify.concurrency` at a time. What tests call to drain the outbox.
    pub async fn deliver_due(&self) -> Result<DeliveryReport> {
        let now = chrono::Utc::now();
        let lease = chrono::Duration::seconds(self.settings.lease_secs.max(1) as i64);
        let due = self
            .store
            .take_due_notifications(now, now + lease, self.settings.batch)
            .await?;
        let mut report = DeliveryReport {
            taken: due.len(),
            ..DeliveryReport::default()
        };
        let rounds: Vec<Result<Vec<AttemptOutcome>>> = futures::stream::iter(due)
            .map(|due| async move { self.round(&due).await })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        for round in rounds {
            match round {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        match outcome {
                            AttemptOutcome::Delivered => report.delivered += 1,
                            AttemptOutcome::WillRetry => report.failed += 1,
                            AttemptOutcome::GaveUp => report.gave_up += 1,
                        }
                    }
                }
                // Left leased: taken again once the lease is over.
                Err(err) => tracing::warn!(error = %err, "notification round not recorded"),
            }
        }
        for (event, count) in [
            ("notify_delivered", report.delivered),
            ("notify_failed", report.failed),
            ("notify_gave_up", report.gave_up),
        ] {
            if count > 0 {
                self.store.note_event(event, count as u64).await;
            }
        }
        Ok(report)
    }

    /// Delivers until dropped: at once again while there was work, else after the poll interval.
    pub async fn deliver_forever(&self) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        loop {
            match self.deliver_due().await {
                Ok(report) if report.taken > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "notifications not taken; trying again"),
            }
            tokio::time::sleep(idle).await;
        }
    }

    /// One round on one notification: an attempt at each target not done with it, then the outcome
    /// written in one step. Returns each attempt's outcome.
    async fn round(&self, due: &DueNotification) -> Result<Vec<AttemptOutcome>> {
        let Some(run) = self.store.get_run(&due.run_id).await? else {
            // Trimmed from its job's history, or deleted with its job: nothing left to tell of.
            tracing::warn!(run_id = %due.run_id, event = %due.event, "notification of a run gone dropped");
            self.store.drop_notification(due).await?;
            return Ok(Vec::new());
        };
        let job = self.store.get_job(&run.job_id).await?;
        let account = self.accounts.get(&run.account).cloned().unwrap_or_default();
        let targets = notify::targets_for(job.as_ref(), &account.default_targets, due.event);
        let mut progress: EventProgress = self
            .store
            .notification_state(&run.id, due.event)
            .await?
            .and_then(|state| serde_json::from_str(&state).ok())
            .unwrap_or_default();
        let at = notify::event_time(due.event, &run, job.as_ref()).unwrap_or_else(chrono::Utc::now);
        let mut attempts = Vec::new();
        let mut outcomes = Vec::new();
        let mut next_due: Option<chrono::DateTime<chrono::Utc>> = None;
        for target in &targets {
            let entry = progress.entry(target.key()).or_default();
            if entry.done {
                continue;
            }
            entry.attempts += 1;
            let body = notify::body(target.format, due.event, &run, job.as_ref(), at);
            let (status, error) = match &account.secret {
                Some(secret) => self.post(target, due, &body, secret).await,
                None => (None, Some("the account has no notify_secret".to_string())),
            };
            let mut outcome =
                notify::outcome_of(status, entry.attempts, self.settings.max_attempts);
            if account.secret.is_none() || error.as_deref().is_some_and(is_refusal) {
                outcome = AttemptOutcome::GaveUp;
            }
            match outcome {
                AttemptOutcome::WillRetry => {
                    let at = chrono::Utc::now() + notify::backoff(entry.attempts, &self.settings);
                    next_due = Some(next_due.map_or(at, |earliest| earliest.min(at)));
                }
                _ => entry.done = true,
            }
            if outcome != AttemptOutcome::Delivered {
                tracing::warn!(run_id = %run.id, event = %due.event, host = %target.host(),
                    attempt = entry.attempts, ?status, error = error.as_deref().unwrap_or(""),
                    ?outcome, "notification not delivered");
            }
            let record =
                notify::attempt_record(due.event, target, entry.attempts, outcome, status, error);
            attempts.push(serde_json::to_string(&record).unwrap_or_default());
            outcomes.push(outcome);
        }
        let round = NotifyRound {
            state: serde_json::to_string(&progress).unwrap_or_default(),
            attempts,
            next_due,
        };
        self.store.finish_notification_round(due, &round).await?;
        Ok(outcomes)
    }

    /// POSTs `body` to the target if the outbound rules allow it: the name is resolved once,
    /// checked, and the request goes to the checked addresses only, redirects not followed. The
    /// answer's status, or why there was none.
    async fn post(
        &self,
        target: &NotifyTarget,
        due: &DueNotification,
        body: &[u8],
        secret: &SecretString,
    ) -> (Option<u16>, Option<String>) {
        match self.try_post(target, due, body, secret).await {
            Ok(status) => (Some(status), None),
            Err(why) => (None, Some(why)),
        }
    }

    async fn try_post(
        &self,
        target: &NotifyTarget,
        due: &DueNotification,
        body: &[u8],
        secret: &SecretString,
    ) -> std::result::Result<u16, String> {
        let url = check_url(&target.url).map_err(|reason| format!("{REFUSED}: {reason}"))?;
        let addresses = checked_addresses(&url, &self.outbound)
            .await
            .map_err(|err| match err.code {
                spot_shared::ErrorCode::Forbidden => format!("{REFUSED}: {}", err.message),
                _ => err.message,
            })?;
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(self.settings.timeout_secs))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(domain) = url.domain() {
            client = client.resolve_to_addrs(domain, &addresses);
        }
        let client = client.build().map_err(|e| format!("http client: {e}"))?;
        let response = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "spot-scheduler")
            .header(notify::EVENT_HEADER, due.event.as_str())
            .header(
                notify::DELIVERY_HEADER,
                notify::delivery_id(&due.run_id, due.event),
            )
            .header(
                notify::SIGNATURE_HEADER,
                notify::signature(secret.expose_secret().as_bytes(), body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                // Not what failed (a refusal, a reset): that would map what listens where.
                if e.is_timeout() {
                    "no answer in time".to_string()
                } else {
                    "could not reach the URL".to_string()
                }
            })?;
        Ok(response.status().as_u16())
    }
}

/// How a refusal by the outbound rules starts: never worth another attempt.
const REFUSED: &str = "not allowed by the outbound rules";

fn is_refusal(error: &str) -> bool {
    error.starts_with(REFUSED)
}
