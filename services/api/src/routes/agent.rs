//! What agents call with their run's secret: fetch the run's spec, stream output, heartbeat.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;
use spot_shared::messages::RunSpec;
use spot_shared::Error;

use crate::auth::authorize_run;
use crate::error::ApiResult;
use crate::state::AppState;

pub async fn spec(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let run = authorize_run(&state, &req, &path).await?;
    let job = state
        .store
        .get_job(&run.job_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("the job of run {} is gone", run.id)))?;
    let container = job
        .container()
        .ok_or_else(|| Error::conflict(format!("job {} runs no container", job.id)))?;
    let spec = RunSpec {
        run_id: run.id.clone(),
        job_id: job.id.clone(),
        attempt: run.attempt,
        instance_id: run.instance_id.clone(),
        image: container.image.clone(),
        argv: container.argv(),
        env: container.env.clone(),
        timeout_secs: job.policies.timeout_secs,
        files: container.files.clone(),
        limits: container.limits.applied(&state.settings.container_limits),
    };
    Ok(HttpResponse::Ok().json(spec))
}

pub async fn append_logs(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let run = authorize_run(&state, &req, &path).await?;
    let length = state
        .store
        .append_log(&run.id, &body, state.settings.api.max_log_bytes)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "stored_bytes": length })))
}

pub async fn heartbeat(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let run = authorize_run(&state, &req, &path).await?;
    state
        .store
        .set_run_fields(&run.id, &[("heartbeat_at", Utc::now().to_rfc3339())])
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "state": run.state })))
}
