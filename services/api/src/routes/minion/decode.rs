//! Decoding minion's job body: keys case-insensitive, types strict, errors worded as minion words
//! them. [`JobBody`] documents the same shape for the OpenAPI document.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use chrono::DateTime;
use serde_json::{Map, Value};
use spot_shared::config::MinionRunner;
use spot_shared::instance_power::PowerAction;
use spot_shared::model::{DummySpec, InstanceSpec, Policies, Runner, Tag};
use utoipa::ToSchema;

use super::text;
use crate::jobs::JobSpec;
use crate::state::AppState;

/// Minion's job body, as `POST` and `PUT /v1/minion/{account}/jobs/{group}[/{id}]` take it.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the shape `decode` reads by hand (minion's keys are case-insensitive).
pub struct JobBody {
    job: JobFields,
    tags: Option<Vec<Tag>>,
}

/// The `job` object of [`JobBody`]; `group`, `id`, `modified_at` are read and checked, then ignored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobFields {
    /// A cron expression (5 or 6 fields), a descriptor or `@every 90s`.
    #[schema(example = "* * * ? *")]
    schedule_expression: String,
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    modified_by: Option<String>,
    /// RFC 3339.
    modified_at: Option<String>,
    group: Option<String>,
    id: Option<String>,
    /// `runner` (one of the account's runners) and, for an instance runner, `instance_id` and
    /// `instance_action` (`start`, `stop` or `reboot`). Every value a string.
    details: Option<std::collections::BTreeMap<String, String>>,
}

/// Decodes minion's `{"job": {...}, "tags": [...]}` (keys case-insensitive, types strict) into a job.
pub(super) fn decode(
    body: &[u8],
    group: &str,
    account: &spot_shared::config::MinionAccount,
    state: &AppState,
) -> Result<JobSpec, HttpResponse> {
    let bad = |message: String| {
        text(
            StatusCode::BAD_REQUEST,
            format!("cannot decode body into create job input: {message}"),
        )
    };
    let root: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let root = lowercase_keys(root).ok_or_else(|| bad("the body is not a JSON object".into()))?;
    let job = match root.get("job") {
        Some(Value::Object(job)) => lowercase_map(job.clone()),
        Some(Value::Null) | None => return Err(text(StatusCode::BAD_REQUEST, "job cannot be nil")),
        Some(other) => return Err(bad(format!("job is not an object: {other}"))),
    };
    let string = |key: &str| -> Result<String, HttpResponse> {
        match job.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("{key} is not a string: {other}"))),
        }
    };
    let description = string("description")?;
    let name = string("name")?;
    let modified_by = string("modified_by")?;
    string("group")?;
    string("id")?;
    let modified_at = string("modified_at")?;
    if !modified_at.is_empty() && DateTime::parse_from_rfc3339(&modified_at).is_err() {
        return Err(bad(format!(
            "modified_at is not an RFC3339 time: {modified_at}"
        )));
    }
    let enabled = match job.get("enabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(bad(format!("enabled is not a bool: {other}"))),
    };
    let schedule = match job.get("schedule_expression") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(bad(
                "schedule_expression is not a valid cron expression: '': Empty spec string".into(),
            ))
        }
        None | Some(Value::Null) => return Err(bad("schedule_expression is required".into())),
        Some(other) => return Err(bad(format!("schedule_expression is not a string: {other}"))),
    };
    let details = match job.get("details") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => return Err(bad(format!("details is not a map: {other}"))),
    };
    for (key, value) in &details {
        if !value.is_string() {
            return Err(bad(format!(
                "invalid type in details map, value of '{key}' is not a string {value}"
            )));
        }
    }
    let runner_name = details
        .get("runner")
        .and_then(Value::as_str)
        .ok_or_else(|| text(StatusCode::BAD_REQUEST, "runner not found in job"))?;
    if !account.runners.iter().any(|r| r == runner_name) {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "runner not found for account",
        ));
    }
    let runner = match state.settings.minion.runners.get(runner_name) {
        Some(MinionRunner::Dummy { template }) => Runner::Dummy(DummySpec {
            template: template.clone(),
            runner_name: Some(runner_name.to_string()),
        }),
        Some(MinionRunner::Instance {}) => {
            let instance_id = details
                .get("instance_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    text(
                        StatusCode::BAD_REQUEST,
                        "MissingDetails: missing instance_id",
                    )
                })?;
            let action = details
                .get("instance_action")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    text(
                        StatusCode::BAD_REQUEST,
                        "MissingDetails: missing instance_action",
                    )
                })?;
            let action = PowerAction::parse(action).ok_or_else(|| {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("unexpected action '{action}' for instance {instance_id}"),
                )
            })?;
            Runner::Instance(InstanceSpec {
                instance_id: instance_id.to_string(),
                action,
                runner_name: Some(runner_name.to_string()),
            })
        }
        None => return Err(text(StatusCode::BAD_REQUEST, "runner not found in job")),
    };
    let tags = match root.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value::<Vec<Tag>>(value.clone())
            .map_err(|e| bad(format!("tags: {e}")))?,
    };
    Ok(JobSpec {
        name: name.chars().filter(|c| !c.is_control()).collect(),
        description,
        modified_by,
        tags,
        group: group.to_string(),
        schedule,
        timezone: "UTC".into(),
        runner,
        enabled,
        policies: Policies::default(),
    })
}

fn lowercase_keys(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(lowercase_map(map)),
        _ => None,
    }
}

fn lowercase_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}
