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
use spot_shared::model::{DummySpec, InstanceSpec, Job, Runner};
use spot_shared::{Error, ErrorCode};

use crate::audit::{Actor, Surface};
use crate::auth::AUTH_HEADER;
use crate::idempotency::IdempotencyKey;
use crate::jobs;
use crate::routes::paging::{ok_paged, PageQuery, Window};
use crate::state::AppState;

mod decode;

use decode::decode;
pub use decode::{JobBody, JobFields};

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
            .default_service(web::to(super::not_found)),
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

#[utoipa::path(get, path = "/v1/minion/ping", tag = "minion", summary = "Liveness (open)", responses((status = 200, content_type = "text/plain", description = "`pong`")))]
pub(super) async fn ping() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .content_type("text/plain; charset=utf-8")
        .body("pong")
}

#[utoipa::path(get, path = "/v1/minion/version", tag = "minion", summary = "Build version (open)", responses((status = 200, description = "`{version, githash, buildstamp}`")))]
pub(super) async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "githash": option_env!("SPOT_GIT_HASH").unwrap_or("No Git Commit Provided"),
        "buildstamp": option_env!("SPOT_BUILD_STAMP").unwrap_or("No BuildStamp Provided"),
    }))
}

#[utoipa::path(get, path = "/v1/minion/metrics", tag = "minion", summary = "Prometheus metrics, as at `/metrics` (open)", responses((status = 200, content_type = "text/plain")))]
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    crate::routes::metrics::exposition(&state).await
}

/// Checks the key and that minion knows the account: its settings and who is acting. `Err` is the
/// response to send. An account the caller may not act on is answered like one that does not
/// exist, so a key reveals nothing about which other accounts there are.
async fn authorize<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    account: &str,
) -> Result<(&'a spot_shared::config::MinionAccount, Actor), HttpResponse> {
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
    Ok((settings, Actor::new(&principal, Surface::Minion)))
}

#[utoipa::path(get, path = "/v1/minion/{account}/jobs", tag = "minion", summary = "The account's jobs as `group/id`, newest first, paged (`X-Next-Offset`)", security(("api_key" = [])), params(("account" = String, Path), PageQuery), responses((status = 200, description = "`[\"group/id\"]`"), (status = 403, description = "Missing or unknown key (empty body)"), (status = 404, content_type = "text/plain", description = "`account not found: X`")))]
pub(super) async fn list_all(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let account = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    let window = match page_window(&req) {
        Ok(window) => window,
        Err(response) => return response,
    };
    match list_page(&state, &account, None, window).await {
        Ok((jobs, next)) => ok_paged(&req, window, next).json(
            jobs.iter()
                .map(|job| format!("{}/{}", job.group, job.id))
                .collect::<Vec<_>>(),
        ),
        Err(err) => from_error(err),
    }
}

#[utoipa::path(get, path = "/v1/minion/{account}/jobs/{group}", tag = "minion", summary = "The ids of a group's jobs, newest first, paged (`X-Next-Offset`)", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path), PageQuery), responses((status = 200, description = "`[\"id\"]`"), (status = 403), (status = 404, content_type = "text/plain")))]
pub(super) async fn list_group(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    if let Err(response) = authorize(&req, &state, &account).await {
        return response;
    }
    let window = match page_window(&req) {
        Ok(window) => window,
        Err(response) => return response,
    };
    match list_page(&state, &account, Some(&group), window).await {
        Ok((jobs, next)) => {
            ok_paged(&req, window, next).json(jobs.iter().map(|job| &job.id).collect::<Vec<_>>())
        }
        Err(err) => from_error(err),
    }
}

/// `?limit=&offset=`, or minion's 400 naming the parameter.
fn page_window(req: &HttpRequest) -> Result<Window, HttpResponse> {
    crate::routes::parse_query::<PageQuery>(req.query_string())
        .map(|query| query.window())
        .map_err(from_error)
}

/// A page of the account's jobs (of one group), and where the next starts.
async fn list_page(
    state: &AppState,
    account: &str,
    group: Option<&str>,
    window: Window,
) -> Result<(Vec<Job>, Option<usize>), Error> {
    let listed = state
        .store
        .list_jobs_from(account, group, window.offset, window.to_read())
        .await?;
    Ok(window.cut(listed))
}

async fn list(state: &AppState, account: &str, group: Option<&str>) -> Result<Vec<Job>, Error> {
    state.store.list_jobs(account, group, 0).await
}

#[utoipa::path(post, path = "/v1/minion/{account}/jobs/{group}", tag = "minion", summary = "Create a job in a group", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path)), request_body = JobBody, responses((status = 200, description = "`{job, tags, log, next}`"), (status = 400, content_type = "text/plain", description = "Minion's error text"), (status = 403), (status = 404, content_type = "text/plain"), (status = 429, content_type = "text/plain", description = "Over a quota")))]
pub(super) async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    key: IdempotencyKey,
    body: web::Bytes,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    let (allowed, actor) = match authorize(&req, &state, &account).await {
        Ok((allowed, actor)) => (allowed.clone(), actor),
        Err(response) => return response,
    };
    let spec = match decode(&body, &group, &allowed, &state) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    let id = key.job_id(&account, &format!("/v1/minion/jobs/{group}"));
    match jobs::create(&state, &actor, &account, spec, id).await {
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

#[utoipa::path(get, path = "/v1/minion/{account}/jobs/{group}/{id}", tag = "minion", summary = "One job with its log", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path), ("id" = String, Path)), responses((status = 200, description = "`{job, tags, log, next}`"), (status = 403), (status = 404, content_type = "text/plain")))]
pub(super) async fn show(
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

#[utoipa::path(put, path = "/v1/minion/{account}/jobs/{group}/{id}", tag = "minion", summary = "Replace a job", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path), ("id" = String, Path)), request_body = JobBody, responses((status = 202, description = "`{job, tags, log, next}`"), (status = 400, content_type = "text/plain"), (status = 403), (status = 404, content_type = "text/plain")))]
pub(super) async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    let (allowed, actor) = match authorize(&req, &state, &account).await {
        Ok((allowed, actor)) => (allowed.clone(), actor),
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
    match jobs::replace(&state, &actor, current, spec).await {
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

#[utoipa::path(delete, path = "/v1/minion/{account}/jobs/{group}/{id}", tag = "minion", summary = "Delete a job (deleting what is not there succeeds)", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path), ("id" = String, Path)), responses((status = 202, description = "`OK`"), (status = 403), (status = 404, content_type = "text/plain")))]
pub(super) async fn delete_one(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    let actor = match authorize(&req, &state, &account).await {
        Ok((_, actor)) => actor,
        Err(response) => return response,
    };
    // As minion (and S3) do, deleting what is not there succeeds.
    match load(&state, &account, &group, &id).await {
        Ok(job) => match jobs::delete(&state, &actor, &job).await {
            Ok(()) => ok_accepted(),
            Err(err) => from_error(err),
        },
        Err(_) => ok_accepted(),
    }
}

#[utoipa::path(delete, path = "/v1/minion/{account}/jobs/{group}", tag = "minion", summary = "Delete every job of a group", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path)), responses((status = 202, description = "`OK`"), (status = 403), (status = 404, content_type = "text/plain")))]
pub(super) async fn delete_group(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (account, group) = path.into_inner();
    let actor = match authorize(&req, &state, &account).await {
        Ok((_, actor)) => actor,
        Err(response) => return response,
    };
    let result = async {
        for job in list(&state, &account, Some(&group)).await? {
            jobs::delete(&state, &actor, &job).await?;
        }
        Ok::<(), Error>(())
    }
    .await;
    match result {
        Ok(()) => ok_accepted(),
        Err(err) => from_error(err),
    }
}

#[utoipa::path(patch, path = "/v1/minion/{account}/jobs/{group}/{id}", tag = "minion", summary = "Run a job now", security(("api_key" = [])), params(("account" = String, Path), ("group" = String, Path), ("id" = String, Path)), responses((status = 202, description = "`OK`"), (status = 400, content_type = "text/plain"), (status = 403), (status = 404, content_type = "text/plain"), (status = 409, content_type = "text/plain")))]
pub(super) async fn run_now(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let (account, group, id) = path.into_inner();
    let (allowed, actor) = match authorize(&req, &state, &account).await {
        Ok((allowed, actor)) => (allowed.clone(), actor),
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
    let key = crate::idempotency::IdempotencyKey::of(&req);
    match jobs::run_now(&state, &actor, &job, &key).await {
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
