//! HRM's tasks API (seed 001): `POST /tasks` (form-encoded or JSON) answering the bare id,
//! `GET|PUT|DELETE /tasks/{id}`, `GET /status`; errors as `{"errors":{"field":"reason"}}`. A task runs
//! at once through the http runner. Unlike HRM: every call needs a key, AWS keys in a request are
//! accepted but never stored or echoed, outbound targets are checked, and unknown ids get 404.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use spot_shared::model::{HttpSpec, Job, Policies, Run, RunState, Runner};
use spot_shared::outbound::check_url;
use spot_shared::Error;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::idempotency::IdempotencyKey;
use crate::jobs::{self, fill_placeholders, JobSpec};
use crate::routes::paging::{ok_paged, PageQuery};
use crate::routes::Query;
use crate::state::AppState;

const GROUP: &str = "hrm";
const DEFAULT_TIMEOUT_SECS: u64 = 30 * 60;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tasks", web::post().to(create))
        .route("/tasks/{id}", web::post().to(create_with_ignored_id))
        .route("/tasks/{id}", web::get().to(show))
        .route("/tasks/{id}", web::put().to(update_meta))
        .route("/tasks/{id}", web::delete().to(delete))
        .route("/status", web::get().to(status));
}

/// HRM's task parameters, form-encoded or JSON (read by [`params`]; strings or numbers).
#[derive(ToSchema)]
#[allow(dead_code)] // Documents what `create` reads from the parameters.
pub struct TaskForm {
    /// Called with `GET` when the task runs; `{instance_ip}` and the like are filled in.
    #[schema(example = "https://example.com/hook")]
    action_url: String,
    /// Called with the action's outcome.
    callback_url: Option<String>,
    /// An EC2 instance to start for the task; needs both keys below, which are never stored.
    instance_id: Option<String>,
    access_key_id: Option<String>,
    access_key_secret: Option<String>,
    /// Seconds, 1 to a week.
    timeout: Option<u64>,
}

/// The parameters of `PUT /tasks/{id}`.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents what `update_meta` reads.
pub struct MetaForm {
    /// At most 64 KiB.
    meta: String,
}

/// `{"errors": {field: reason}}` with 400.
fn errors(field: &str, reason: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "errors": { field: reason } }))
}

/// The request's parameters, form-encoded (as HRM takes them) or a JSON object; `None` if malformed.
fn params(req: &HttpRequest, body: &[u8]) -> Option<BTreeMap<String, String>> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let object: Map<String, Value> = serde_json::from_slice(body).ok()?;
        return Some(
            object
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    Value::Number(n) => Some((k, n.to_string())),
                    _ => None,
                })
                .collect(),
        );
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    Some(pairs.into_iter().collect())
}

#[utoipa::path(post, path = "/tasks/{id}", tag = "hrm", summary = "As `POST /tasks`; HRM ignores the id", security(("api_key" = [])), params(("id" = String, Path)), request_body(content((TaskForm = "application/x-www-form-urlencoded"), (TaskForm = "application/json"))), responses((status = 200, description = "The bare id"), (status = 400), (status = 403)))]
pub(super) async fn create_with_ignored_id(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    create(req, caller, state, key, body).await
}

#[utoipa::path(post, path = "/tasks", tag = "hrm", summary = "Create an HTTP task that runs at once (seed 001)", security(("api_key" = [])), request_body(content((TaskForm = "application/x-www-form-urlencoded"), (TaskForm = "application/json"))), responses((status = 200, description = "The bare id"), (status = 400, description = "`{\"errors\": {field: reason}}`"), (status = 403)))]
pub(super) async fn create(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let Some(params) = params(&req, &body) else {
        return Ok(errors("body", "malformed"));
    };
    let non_empty = |key: &str| params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let Some(action_url) = non_empty("action_url") else {
        return Ok(errors("action_url", "undefined"));
    };
    if check_url(&fill_placeholders(action_url)).is_err() {
        return Ok(errors("action_url", "malformed_url"));
    }
    let callback_url = non_empty("callback_url");
    if callback_url.is_some_and(|url| check_url(url).is_err()) {
        return Ok(errors("callback_url", "malformed_url"));
    }
    let instance_id = non_empty("instance_id");
    if let Some(instance_id) = instance_id {
        // HRM's clients send keys with an instance; they are checked for presence and dropped: EC2 is
        // called with the service's own credentials.
        for key in ["access_key_id", "access_key_secret"] {
            if non_empty(key).is_none() {
                return Ok(errors(key, "undefined"));
            }
        }
        match state
            .ec2
            .owned_instance(instance_id, &caller.0.account)
            .await
        {
            Ok(info)
                if matches!(
                    info.state.as_str(),
                    "stopped" | "pending" | "stopping" | "running"
                ) => {}
            Ok(_) => return Ok(errors("instance_id", "unexpected_state")),
            Err(err) if err.code == spot_shared::ErrorCode::NotFound => {
                return Ok(errors("instance_id", "not_found"))
            }
            Err(err) if err.code == spot_shared::ErrorCode::Forbidden => {
                return Ok(errors("instance_id", "forbidden"))
            }
            Err(err) if err.code == spot_shared::ErrorCode::InvalidInput => {
                return Ok(errors("instance_id", &err.message))
            }
            Err(err) => return Err(err.into()),
        }
    }
    let timeout = match non_empty("timeout") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(text) => match text.parse::<u64>() {
            Ok(secs) if (1..=Policies::MAX_TIMEOUT_SECS).contains(&secs) => secs,
            _ => return Ok(errors("timeout", "malformed")),
        },
    };
    let spec = JobSpec {
        policies: Policies {
            timeout_secs: timeout,
            ..Policies::default()
        },
        ..JobSpec::new(
            GROUP,
            Utc::now().to_rfc3339(),
            Runner::Http(HttpSpec {
                action_url: action_url.to_string(),
                callback_url: callback_url.map(str::to_string),
                instance_id: instance_id.map(str::to_string),
            }),
        )
    };
    let job = match jobs::create(
        &state,
        &caller.actor(),
        &caller.0.account,
        spec,
        key.job_id(&caller.0.account, "/tasks"),
    )
    .await
    {
        Ok(job) => job,
        Err(err) if err.code == spot_shared::ErrorCode::InvalidInput => {
            let field = err.field.as_deref().unwrap_or("body");
            return Ok(errors(field, &err.message));
        }
        Err(err) => return Err(err.into()),
    };
    // HRM answers the bare id, labelled JSON.
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(job.id))
}

async fn load(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<(Job, HttpSpec)>, Error> {
    match jobs::load_owned(state, caller, id).await {
        Ok(job) => match &job.runner {
            Runner::Http(spec) if job.group == GROUP => {
                let spec = spec.clone();
                Ok(Some((job, spec)))
            }
            _ => Ok(None),
        },
        Err(err) if err.code == spot_shared::ErrorCode::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn rfc1123(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn task_status(run: Option<&Run>) -> &'static str {
    match run.map(|r| r.state) {
        Some(RunState::Succeeded) => "complete",
        Some(RunState::TimedOut) => "timeout",
        Some(state) if state.is_terminal() => "error",
        _ => "pending",
    }
}

#[utoipa::path(get, path = "/tasks/{id}", tag = "hrm", summary = "One task", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "`{id, action_url, callback_url, state, meta, ...}`"), (status = 404)))]
pub(super) async fn show(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let Some((job, spec)) = load(&state, &caller, &path).await? else {
        return Ok(HttpResponse::NotFound().finish());
    };
    let run = state.store.latest_run(&job.id).await?;
    let completed_at = run
        .as_ref()
        .filter(|r| r.state.is_terminal())
        .and_then(|r| r.transitions.get(&r.state).copied());
    Ok(HttpResponse::Ok().json(json!({
        "id": job.id,
        "action_url": spec.action_url,
        "callback_url": spec.callback_url,
        "instance_id": spec.instance_id,
        // Access keys are never stored, so never shown.
        "access_key_id": null,
        "status": task_status(run.as_ref()),
        "meta": run.as_ref().and_then(|r| r.meta.clone()),
        "started_at": rfc1123(job.created_at),
        "completed_at": completed_at.map(rfc1123),
        "callback_status": run.as_ref().and_then(|r| r.callback_status.clone()),
        "timeout": job.policies.timeout_secs,
    })))
}

#[utoipa::path(put, path = "/tasks/{id}", tag = "hrm", summary = "Set a task's `meta`", security(("api_key" = [])), params(("id" = String, Path)), request_body(content((MetaForm = "application/x-www-form-urlencoded"), (MetaForm = "application/json"))), responses((status = 204), (status = 400, description = "`{\"errors\": {\"meta\": reason}}`"), (status = 404), (status = 409, description = "The task has not started yet")))]
pub(super) async fn update_meta(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let Some((job, _)) = load(&state, &caller, &path).await? else {
        return Ok(HttpResponse::NotFound().finish());
    };
    let Some(params) = params(&req, &body) else {
        return Ok(errors("body", "malformed"));
    };
    let Some(meta) = params.get("meta") else {
        return Ok(errors("meta", "undefined"));
    };
    if meta.len() > 64 * 1024 {
        return Ok(errors("meta", "too_long"));
    }
    let Some(run) = state.store.latest_run(&job.id).await? else {
        return Err(Error::conflict("the task has not started yet").into());
    };
    state
        .store
        .set_run_fields(&run.id, &[("meta", meta.clone())])
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "hrm", summary = "Delete a task", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 204), (status = 404)))]
pub(super) async fn delete(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let Some((job, _)) = load(&state, &caller, &path).await? else {
        return Ok(HttpResponse::NotFound().finish());
    };
    jobs::delete(&state, &caller.actor(), &job).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/status", tag = "hrm", summary = "The instances started for tasks, and the pending ones among the newest tasks, paged (`X-Next-Offset`)", security(("api_key" = [])), params(PageQuery), responses((status = 200), (status = 403)))]
pub(super) async fn status(
    req: HttpRequest,
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let window = query.window();
    let listed = state
        .store
        .list_jobs_from(
            &caller.0.account,
            Some(GROUP),
            window.offset,
            window.to_read(),
        )
        .await?;
    let (listed, next) = window.cut(listed);
    let mut pending = Map::new();
    for job in listed {
        let run = state.store.latest_run(&job.id).await?;
        if task_status(run.as_ref()) == "pending" {
            let instance = match &job.runner {
                Runner::Http(spec) => spec.instance_id.clone(),
                _ => None,
            };
            pending.insert(job.id.clone(), json!(instance));
        }
    }
    let controlled = state
        .store
        .set_members(&controlled_set(&caller.0.account))
        .await?;
    Ok(ok_paged(&req, window, next).json(json!({
        "controlled_instances": controlled,
        "pending_tasks": pending,
    })))
}

/// The instances started for an account's tasks, to be stopped when no task needs them (shared with the
/// provisioner's http runner).
pub fn controlled_set(account: &str) -> String {
    spot_shared::model::HttpSpec::controlled_set(account)
}
