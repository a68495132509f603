//! Who made a state-changing request, and the audit log entry it leaves: the job operations of
//! [`crate::jobs`] (and the backfill routes) take an [`Actor`] and record what they did once it is
//! done, so every surface's requests are logged alike. [`AuditLog`] writes the entries to Redis off
//! the request path, many in one step.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use spot_shared::auth::Principal;
use spot_shared::config::AuditSettings;
use spot_shared::model::{audit_diff, AuditEntry, Job};
use spot_shared::store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Entries waiting to be written at most; past it a request waits for room.
const QUEUED: usize = 10_000;
/// Entries written in one step at most.
const BATCH: usize = 1_000;

/// The api's audit log: entries queue here and a task writes them, a batch at a time.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<AuditEntry>,
}

impl AuditLog {
    /// The log and the task that writes it, which ends once every clone of the log is dropped and
    /// what was queued is written.
    pub fn start(store: Store, settings: AuditSettings) -> (AuditLog, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(QUEUED);
        let writer = tokio::spawn(write_batches(store, settings, receiver));
        (AuditLog { sender }, writer)
    }

    /// Queues `entry` to be written (waiting for room if the writer is behind).
    pub async fn keep(&self, entry: AuditEntry) {
        if self.sender.send(entry).await.is_err() {
            tracing::warn!("audit entry not kept: the writer has stopped");
        }
    }
}

/// Writes what is queued, as much as is there at once (up to [`BATCH`]); a write Redis refuses is
/// tried twice more with backoff, then dropped and counted (`audit_unrecorded`).
async fn write_batches(
    store: Store,
    settings: AuditSettings,
    mut receiver: mpsc::Receiver<AuditEntry>,
) {
    let retention = settings.retention();
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=3 {
            match store
                .record_audits(&batch, retention, settings.max_entries)
                .await
            {
                Ok(()) => break,
                Err(err) if err.is_retryable() && attempt < 3 => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(err) => {
                    tracing::warn!(entries = batch.len(), error = %err, "audit entries not kept");
                    store
                        .note_event("audit_unrecorded", batch.len() as u64)
                        .await;
                    break;
                }
            }
        }
    }
}

/// The surface a request came through, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/v1/...` (the dashboard and `spotctl` too).
    V1,
    /// Seed 003's `/schedule`.
    Simple,
    /// Seed 002's `/jobs`.
    Cronjob,
    /// HRM's `/tasks`.
    Hrm,
    /// `/v1/minion/...`.
    Minion,
    /// `/JobScheduler`.
    Operations,
}

impl Surface {
    pub fn of_path(path: &str) -> Surface {
        if path.starts_with("/v1/minion") {
            Surface::Minion
        } else if path.starts_with("/v1/") || path == "/v1" {
            Surface::V1
        } else if path.starts_with("/schedule") {
            Surface::Simple
        } else if path.starts_with("/jobs") {
            Surface::Cronjob
        } else if path.starts_with("/tasks") {
            Surface::Hrm
        } else {
            Surface::Operations
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::V1 => "v1",
            Surface::Simple => "simple",
            Surface::Cronjob => "cronjob",
            Surface::Hrm => "hrm",
            Surface::Minion => "minion",
            Surface::Operations => "operations",
        }
    }
}

/// Who is acting: the key (by fingerprint) and the surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub key: String,
    pub admin: bool,
    pub surface: Surface,
}

impl Actor {
    pub fn new(principal: &Principal, surface: Surface) -> Actor {
        Actor {
            key: principal.key.clone(),
            admin: principal.admin,
            surface,
        }
    }

    /// Keeps what `action` did to a job (`before` and `after` it, either `None` for a create or a
    /// delete) in the audit log, with `detail`: queued, and written within moments by
    /// [`AuditLog`]'s task. The request itself is done and stays so whatever becomes of the entry.
    pub async fn record(
        &self,
        state: &AppState,
        action: &str,
        (before, after): (Option<&Job>, Option<&Job>),
        detail: Option<Value>,
    ) {
        let Some(job) = after.or(before) else {
            return;
        };
        let entry = AuditEntry {
            id: spot_shared::ids::new_id(),
            at: Utc::now(),
            account: job.account.clone(),
            key: self.key.clone(),
            admin: self.admin,
            surface: self.surface.as_str().to_string(),
            action: action.to_string(),
            job_id: job.id.clone(),
            // A create's specification is the job's first generation, readable while the job is:
            // copying it here would make each entry several times larger (and a million creates,
            // a gigabyte). Edits carry their diff.
            changes: match (before, after) {
                (Some(before), Some(after)) => audit_diff(Some(before), Some(after)),
                _ => Default::default(),
            },
            detail,
        };
        state.audit.keep(entry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surfaces_are_told_by_their_paths() {
        for (path, surface) in [
            ("/v1/jobs", Surface::V1),
            ("/v1/jobs/x/run", Surface::V1),
            ("/v1/minion/acme/jobs", Surface::Minion),
            ("/schedule", Surface::Simple),
            ("/jobs/x", Surface::Cronjob),
            ("/tasks", Surface::Hrm),
            ("/JobScheduler", Surface::Operations),
        ] {
            assert_eq!(Surface::of_path(path), surface, "{path}");
        }
    }
}
