//! Who made a state-changing request, and the audit log entry it leaves: the job operations of
//! [`crate::jobs`] (and the backfill routes) take an [`Actor`] and record what they did once it is
//! done, so every surface's requests are logged alike.

use chrono::Utc;
use serde_json::Value;
use spot_shared::auth::Principal;
use spot_shared::model::{audit_diff, AuditEntry, Job};

use crate::state::AppState;

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
    /// delete) in the audit log, with `detail`. A failure to keep it is logged and counted
    /// (`audit_unrecorded`): the request itself is done and stays so.
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
            changes: if action == "delete" {
                Default::default()
            } else {
                audit_diff(before, after)
            },
            detail,
        };
        let retention = state.settings.audit.retention();
        if let Err(err) = state.store.record_audit(&entry, retention).await {
            tracing::warn!(job_id = %job.id, action, error = %err, "audit entry not kept");
            state.store.note_event("audit_unrecorded", 1).await;
        }
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
