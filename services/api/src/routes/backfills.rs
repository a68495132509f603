//! Backfills: `POST /v1/jobs/{id}/backfill` runs a job for each instant of its schedule in a past
//! range, `concurrency` at a time; listed with their progress, and cancelled as a whole.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use spot_shared::store::{Backfill, MAX_BACKFILL_CONCURRENCY, MAX_BACKFILL_RUNS};
use spot_shared::Error;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::jobs;
use crate::routes::parse_json;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/jobs/{id}/backfill", web::post().to(create))
        .route("/v1/jobs/{id}/backfills", web::get().to(list))
        .route(
            "/v1/jobs/{id}/backfills/{backfill}/cancel",
            web::post().to(cancel),
        );
}

/// A range of the schedule to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// The first instant of the range (included).
    pub from: DateTime<Utc>,
    /// The last (included); not in the future.
    pub to: DateTime<Utc>,
    /// At most this many of its runs under way at once (1 to 100, default 1).
    #[serde(default = "one")]
    pub concurrency: u32,
}

fn one() -> u32 {
    1
}

#[utoipa::path(post, path = "/v1/jobs/{id}/backfill", tag = "jobs", summary = "Run the job for each instant of its schedule in a past range, `concurrency` at a time", security(("api_key" = [])), params(("id" = String, Path)), request_body = BackfillRequest, responses((status = 202, body = Backfill), (status = 400, description = "A bad range, naming the field (more than 10,000 instants: `to`)"), (status = 404), (status = 409, description = "The job is disabled")))]
pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let request: BackfillRequest = parse_json(&body)?;
    let job = jobs::load_owned(&state, &caller, &path).await?;
    if !(1..=MAX_BACKFILL_CONCURRENCY).contains(&request.concurrency) {
        return Err(Error::invalid(
            "concurrency",
            format!("must be 1..={MAX_BACKFILL_CONCURRENCY}"),
        )
        .into());
    }
    for (field, at) in [("from", request.from), ("to", request.to)] {
        spot_shared::schedule::check_instant(at, field)?;
    }
    if request.to < request.from {
        return Err(Error::invalid("to", "must not be before from").into());
    }
    if request.to > Utc::now() {
        return Err(
            Error::invalid("to", "must not be in the future: a backfill runs the past").into(),
        );
    }
    if !job.enabled {
        return Err(Error::conflict("the job is disabled; enable it first").into());
    }
    if !job.parsed_schedule()?.is_recurring() {
        return Err(
            Error::invalid("schedule", "a one-shot job has no instants to backfill").into(),
        );
    }
    let Some(instants) = job.instants_between(request.from, request.to, MAX_BACKFILL_RUNS)? else {
        return Err(Error::invalid(
            "to",
            format!("the range holds more than {MAX_BACKFILL_RUNS} instants of the schedule"),
        )
        .into());
    };
    if instants.is_empty() {
        return Err(Error::invalid("from", "the range holds no instant of the schedule").into());
    }
    let id = state
        .store
        .create_backfill(
            &job,
            &instants,
            (request.from, request.to),
            request.concurrency,
        )
        .await?;
    let started = state.store.start_backfill_runs(&job, &id).await?;
    tracing::info!(job_id = %job.id, backfill = %id, runs = instants.len(), started = started.len(), "backfill created");
    let detail = json!({"backfill": id, "from": request.from, "to": request.to,
        "concurrency": request.concurrency, "runs": instants.len()});
    caller
        .actor()
        .record(&state, "backfill", (Some(&job), Some(&job)), Some(detail))
        .await;
    let backfill = state
        .store
        .get_backfill(&job.id, &id)
        .await?
        .ok_or_else(|| Error::internal("the backfill just made cannot be read"))?;
    Ok(HttpResponse::Accepted().json(backfill))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/backfills", tag = "jobs", summary = "The job's backfills, newest first, with their progress", security(("api_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "`{\"backfills\": [Backfill]}`"), (status = 404)))]
pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let job = jobs::load_owned(&state, &caller, &path).await?;
    let backfills = state.store.job_backfills(&job.id, 100).await?;
    Ok(HttpResponse::Ok().json(json!({ "backfills": backfills })))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/backfills/{backfill}/cancel", tag = "jobs", summary = "Cancel a backfill as a whole: its waiting runs, and those under way (their instances terminated)", security(("api_key" = [])), params(("id" = String, Path), ("backfill" = String, Path)), responses((status = 200, body = Backfill), (status = 404), (status = 409, description = "The backfill is done or cancelled already")))]
pub async fn cancel(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (job_id, backfill) = path.into_inner();
    let job = jobs::load_owned(&state, &caller, &job_id).await?;
    if state
        .store
        .get_backfill(&job.id, &backfill)
        .await?
        .is_none()
    {
        return Err(Error::not_found("no such backfill of this job").into());
    }
    let Some(under_way) = state.store.cancel_backfill(&job.id, &backfill).await? else {
        return Err(Error::conflict("the backfill is done or cancelled already").into());
    };
    for (run_id, instance) in &under_way {
        if instance.is_none() {
            continue;
        }
        if let Some(run) = state.store.get_run(run_id).await? {
            jobs::terminate_instance(&state, &run, "backfill cancelled", job.stop_grace_secs())
                .await?;
        }
    }
    tracing::info!(job_id = %job.id, backfill, under_way = under_way.len(), "backfill cancelled");
    let detail = json!({"backfill": backfill, "runs_under_way_cancelled": under_way.len()});
    caller
        .actor()
        .record(
            &state,
            "cancel_backfill",
            (Some(&job), Some(&job)),
            Some(detail),
        )
        .await;
    let shown = state.store.get_backfill(&job.id, &backfill).await?;
    Ok(HttpResponse::Ok().json(shown))
}
