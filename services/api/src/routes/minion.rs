//! Minion's API under `/v1/minion` (seed 000), with minion's status codes and bodies: 200 on create,
//! 202 on update, delete and run; plain-text `OK` and error bodies; lists of `group/id` and of bare
//! ids; 404 `account not found: X`; 403 with an empty body for a missing or wrong key; strict field
//! types. Minion's bugs stay out: run-now of a just-created job runs it (jobs are read from the store,
//! not a cache), a runner the account may not use is refused and nothing is queued, and tags belong
//! to the job, not to its group.

// Errors here are the HTTP responses minion sends, built once per failed request; boxing them
// would buy nothing.
#![allow(clippy::result_large_err)]

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use spot_shared::config::MinionRunner;
use spot_shared::instance_power::PowerAction;
use spot_shared::model::{DummySpec, InstanceSpec, Job, Policies, Runner, Tag};
use spot_shared::{Error, ErrorCode};

use crate::auth::AUTH_HEADER;
use crate::jobs::{self, JobSpec};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/minion")
            .route("/ping", web::get().to(ping))
            .route("/version", web::get().to(version))
            .route("/metrics", web::get().to(metrics))
            .route("/{account}/jobs", web::get().to(list_all))
            .route("/{account}/jobs/{group}", web::get().to(list_group))
            .route("/{account}/jobs/{group}", web::post().to(create))
            .route("/{account}/jobs/{group}", web::delete().to(delete_group))
            .route("/{account}/jobs/{group}/{id}", web::get().to(show))
            .route("/{account}/jobs/{group}/{id}", web::put().to(update))
            .route("/{account}/jobs/{group}/{id}", web::delete().to(delete_one))
            .route("/{account}/jobs/{group}/{id}", web::patch().to(run_now))
            .route(
                "/{tail:.*}",
                web::route().method(Method::OPTIONS).to(options),
            )
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() })),
    );
}

/// Minion answers errors in plain text.
fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body.into())
}

fn forbidden() -> HttpResponse {
    HttpResponse::Forbidden().finish()
}

fn from_error(err: Error) -> HttpResponse {
    let status = match err.code {
        ErrorCode::InvalidInput | ErrorCode::PayloadTooLarge => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized | ErrorCode::Forbidden => return forbidden(),
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::Internal => {
            tracing::error!(error = %err, "minion api error");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    text(status, err.to_string())
}

async fn options() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, AUTH_HEADER))
        .finish()
}

async fn ping() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .content_type("text/plain; charset=utf-8")
        .body("pong")
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "githash": option_env!("SPOT_GIT_HASH").unwrap_or("No Git Commit Provided"),
        "buildstamp": option_env!("SPOT_BUILD_STAMP").unwrap_or("No BuildStamp Provided"),
    }))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    crate::routes::metrics::exposition(&state).await
}

/// Checks the key and that minion knows the account. `Err` is the response to send. An account the
/// caller may not act on is answered like one that does not exist, so a key reveals nothing about
/// which other accounts there are.
async fn authorize<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    account: &str,
) -> Result<&'a spot_shared::config::MinionAccount, HttpResponse> {
    let principal = match crate::auth::principal_of(req, state).await {
        Ok(principal) => principal,
        Err(err) => return Err(from_error(err)),
    };
    let not_found = || {
        text(
            StatusCode::NOT_FOUND,
            format!("account not found: {account}"),
        )
    };
    let settings = state
        .settings
        .minion
        .accounts
        .get(account)
        .ok_or_else(not_found)?;
    if !(principal.admin || principal.account == account) {
        return Err(not_found());
    }
    Ok(settings)
}

async fn list_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let account = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    match list(&state, &account, None).await {
        Ok(jobs) => HttpResponse::Ok().json(
            jobs.iter()
                .map(|job| format!("{}/{}", job.group, job.id))
                .collect::<Vec<_>>(),
        ),
        Err(err) => from_error(err),
    }
}

async fn list_group(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    match list(&state, &account, Some(&group)).await {
        Ok(jobs) => HttpResponse::Ok().json(jobs.iter().map(|job| &job.id).collect::<Vec<_>>()),
        Err(err) => from_error(err),
    }
}

async fn list(state: &AppState, account: &str, group: Option<&str>) -> Result<Vec<Job>, Error> {
    state.store.list_jobs(account, group, 0).await
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    let allowed = match authorize(&req, &state, &account).await {
        Ok(allowed) => allowed.clone(),
        Err(response) => return response,
    };
    let spec = match decode(&body, &group, &allowed, &state) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    match jobs::create(&state, &account, spec).await {
        Ok(job) => HttpResponse::Ok().json(job_response(&state, &job, None)),
        Err(err) => from_error(err),
    }
}

/// Finds the job of the URL, owned by its account and in its group.
async fn load(state: &AppState, account: &str, group: &str, id: &str) -> Result<Job, HttpResponse> {
    match state.store.get_job(id).await {
        Ok(Some(job)) if job.account == account && job.group == group => Ok(job),
        Ok(_) => Err(text(StatusCode::NOT_FOUND, format!("job not found {id}"))),
        Err(err) => Err(from_error(err)),
    }
}

async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    let job = match load(&state, &account, &group, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let log = log_info(&state, &job).await;
    HttpResponse::Ok().json(job_response(&state, &job, Some(log)))
}

async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    let allowed = match authorize(&req, &state, &account).await {
        Ok(allowed) => allowed.clone(),
        Err(response) => return response,
    };
    let spec = match decode(&body, &group, &allowed, &state) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    let current = match load(&state, &account, &group, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    match jobs::replace(&state, current, spec).await {
        Ok(job) => {
            let log = log_info(&state, &job).await;
            HttpResponse::Accepted().json(job_response(&state, &job, Some(log)))
        }
        Err(err) => from_error(err),
    }
}

fn ok_accepted() -> HttpResponse {
    HttpResponse::Accepted()
        .content_type("application/json")
        .body("OK")
}

async fn delete_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    // As minion (and S3) do, deleting what is not there succeeds.
    match load(&state, &account, &group, &id).await {
        Ok(job) => match jobs::delete(&state, &job).await {
            Ok(()) => ok_accepted(),
            Err(err) => from_error(err),
        },
        Err(_) => ok_accepted(),
    }
}

async fn delete_group(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    let result = async {
        for job in list(&state, &account, Some(&group)).await? {
            jobs::delete(&state, &job).await?;
        }
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => ok_accepted(),
        Err(err) => from_error(err),
    }
}

async fn run_now(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    let allowed = match authorize(&req, &state, &account).await {
        Ok(allowed) => allowed.clone(),
        Err(response) => return response,
    };
    let job = match load(&state, &account, &group, &id).await {
        Ok(job) => job,
        Err(response) => return response,
    };
    let Some(runner_name) = minion_runner_name(&job) else {
        return text(StatusCode::BAD_REQUEST, "runner not found in job");
    };
    // Minion wrote this error and queued the job anyway; here nothing is queued.
    if !allowed.runners.contains(&runner_name) {
        return text(StatusCode::BAD_REQUEST, "runner not found for account");
    }
    match jobs::run_now(&state, &job).await {
        Ok(_) => ok_accepted(),
        Err(err) => from_error(err),
    }
}

/// Minion's job JSON: ten keys in minion's order.
fn job_json(job: &Job) -> Value {
    let mut details = Map::new();
    if let Runner::Instance(spec) = &job.runner {
        let action = serde_json::to_value(spec.action).unwrap_or(Value::Null);
        details.insert("instance_action".into(), action);
        details.insert("instance_id".into(), Value::from(spec.instance_id.as_str()));
    }
    if let Some(name) = minion_runner_name(job) {
        details.insert("runner".into(), Value::from(name));
    }
    let mut out = Map::new();
    out.insert("account".into(), job.account.clone().into());
    out.insert("description".into(), job.description.clone().into());
    out.insert("details".into(), Value::Object(details));
    out.insert("group".into(), job.group.clone().into());
    out.insert("id".into(), job.id.clone().into());
    out.insert("modified_at".into(), seconds(job.updated_at).into());
    out.insert("modified_by".into(), job.modified_by.clone().into());
    out.insert("name".into(), job.name.clone().into());
    out.insert("schedule_expression".into(), job.schedule.clone().into());
    out.insert("enabled".into(), job.enabled.into());
    Value::Object(out)
}

/// The configured runner a job came from (minion's `details.runner`).
fn minion_runner_name(job: &Job) -> Option<String> {
    match &job.runner {
        Runner::Dummy(DummySpec { runner_name, .. })
        | Runner::Instance(InstanceSpec { runner_name, .. }) => runner_name.clone(),
        _ => None,
    }
}

fn seconds(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn job_response(_state: &AppState, job: &Job, log: Option<Value>) -> Value {
    json!({
        "job": job_json(job),
        "tags": job.tags,
        "log": log,
        "next": job.next_fire_at.map(seconds),
    })
}

/// Where a job's output lives: here, its runs' logs.
async fn log_info(state: &AppState, job: &Job) -> Value {
    let bytes = match state.store.latest_run(&job.id).await {
        Ok(Some(run)) => state
            .store
            .get_log(&run.id)
            .await
            .map(|log| log.len())
            .unwrap_or(0),
        _ => 0,
    };
    json!({
        "name": format!("{}-{}", job.account, job.group),
        "created_at": seconds(job.created_at),
        "retention": job.policies.history_limit,
        "bytes": bytes,
    })
}

/// Decodes minion's `{"job": {...}, "tags": [...]}` (keys case-insensitive, types strict) into a job.
fn decode(
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
