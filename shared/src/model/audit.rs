//! The audit log's entries: who changed what of an account's jobs, when, through which surface.
//! Written by the api after each state-changing request ([`crate::store::Store::record_audits`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::Job;

/// One state-changing request, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    /// The account whose job it was.
    pub account: String,
    /// The key that made the request: `key-` and 12 hex digits of its SHA-256, never the key.
    pub key: String,
    /// Whether that key is an admin key (acting on another account's job).
    pub admin: bool,
    /// The surface the request came through: `v1`, `simple`, `cronjob`, `hrm`, `minion`,
    /// `operations`.
    pub surface: String,
    /// `create`, `edit`, `enable`, `disable`, `pause`, `resume`, `delete`, `run_now`, `backfill`,
    /// `cancel_backfill`.
    pub action: String,
    pub job_id: String,
    /// What an edit changed of the job's specification, by field (`schedule`,
    /// `policies.timeout_secs`, `runner.image`): each field's value before and after (`null` where
    /// it had none). A create carries none: its specification is the job's first generation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub changes: BTreeMap<String, Change>,
    /// What the action was given beyond a change (a run-now's instant and overrides, a backfill's
    /// range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
}

/// A field's value before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    #[schema(value_type = Object)]
    pub from: Value,
    #[schema(value_type = Object)]
    pub to: Value,
}

/// The fields of a job that are the system's, not its specification: never in a diff.
const NOT_SPEC: [&str; 6] = [
    "id",
    "account",
    "generation",
    "created_at",
    "updated_at",
    "modified_by",
];

/// Objects nested in a job whose fields are diffed one by one (`policies.timeout_secs`).
const DIFFED_BY_FIELD: [&str; 2] = ["policies", "runner"];

/// What changed from `before` to `after` (either `None`: a create or a delete), field by field.
pub fn diff(before: Option<&Job>, after: Option<&Job>) -> BTreeMap<String, Change> {
    let as_map = |job: Option<&Job>| match job.map(serde_json::to_value) {
        Some(Ok(Value::Object(map))) => map,
        _ => serde_json::Map::new(),
    };
    let (before, after) = (as_map(before), as_map(after));
    let mut changes = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        if NOT_SPEC.contains(&name.as_str()) {
            continue;
        }
        let old = before.get(name).cloned().unwrap_or(Value::Null);
        let new = after.get(name).cloned().unwrap_or(Value::Null);
        if old == new {
            continue;
        }
        match (fields_of(&old), fields_of(&new)) {
            (Some(a), Some(b)) if DIFFED_BY_FIELD.contains(&name.as_str()) => {
                let fields: std::collections::BTreeSet<&String> =
                    a.keys().chain(b.keys()).collect();
                for field in fields {
                    let from = a.get(field).cloned().unwrap_or(Value::Null);
                    let to = b.get(field).cloned().unwrap_or(Value::Null);
                    if from != to {
                        changes.insert(format!("{name}.{field}"), Change { from, to });
                    }
                }
            }
            _ => {
                changes.insert(name.clone(), Change { from: old, to: new });
            }
        }
    }
    changes
}

/// An object's fields, none for `null`; `None` for any other value.
fn fields_of(value: &Value) -> Option<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map.clone()),
        Value::Null => Some(serde_json::Map::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Policies;

    fn job() -> Job {
        Job::dummy_for_tests(Policies::default())
    }

    #[test]
    fn a_diff_names_each_changed_field_and_nothing_of_the_systems() {
        let before = job();
        let mut after = before.clone();
        after.schedule = "@daily".into();
        after.policies.timeout_secs = 60;
        after.generation += 1;
        after.updated_at = Utc::now();
        let changes = diff(Some(&before), Some(&after));
        assert_eq!(
            changes.keys().collect::<Vec<_>>(),
            ["policies.timeout_secs", "schedule"]
        );
        assert_eq!(changes["policies.timeout_secs"].from, 1800);
        assert_eq!(changes["policies.timeout_secs"].to, 60);
        assert!(diff(Some(&before), Some(&before)).is_empty());
    }

    #[test]
    fn a_create_shows_every_field_from_null() {
        let changes = diff(None, Some(&job()));
        assert_eq!(changes["schedule"].from, Value::Null);
        assert!(changes.contains_key("runner.template"), "{changes:?}");
        assert!(!changes.contains_key("generation"));
    }
}
