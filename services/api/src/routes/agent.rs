//! What agents call with their run's secret: fetch the run's spec, stream output, heartbeat.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;
use spot_shared::messages::RunSpec;
use spot_shared::Error;

use crate::auth::authorize_run;
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(get, path = "/agent/runs/{run_id}", tag = "agents", summary = "The run's spec for its agent", params(("run_id" = String, Path), ("X-Run-Secret" = String, Header)), responses((status = 200, body = RunSpec), (status = 403), (status = 404)))]
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
    // A run-now's image, command or environment for this run alone.
    let container = match &run.overrides {
        Some(overrides) => overrides.applied_to(container),
        None => container.clone(),
    };
    // A retry is told the attempt it follows, so it can resume from that attempt's checkpoint (an
    // array copy's names it; others are found by their fire).
    let previous = match run.attempt {
        _ if run.previous_run.is_some() => run.previous_run.clone(),
        _ if run.array_parent().is_some() => None,
        0 | 1 => None,
        attempt => {
            state
                .store
                .fire_run(&job.id, run.scheduled_at, attempt - 1)
                .await?
        }
    };
    let spec = RunSpec {
        run_id: run.id.clone(),
        job_id: job.id.clone(),
        attempt: run.attempt,
        instance_id: run.instance_id.clone(),
        image: container.image.clone(),
        argv: container.argv(),
        // The run's identity last: a user's variable of the same name cannot hide it.
        env: container
            .env
            .iter()
            .cloned()
            .chain(run.identity_env())
            .chain(previous.map(|id| format!("SPOT_PREVIOUS_RUN_ID={id}")))
            .collect(),
        timeout_secs: job.policies.timeout_secs,
        files: container.files.clone(),
        limits: container.limits.applied(&state.settings.container_limits),
        fetch: (*state.fetch).clone(),
        stop_signal: container
            .stop_signal
            .clone()
            .unwrap_or_else(|| "SIGTERM".into()),
        stop_grace_secs: container
            .stop_grace_secs
            .unwrap_or(spot_shared::model::DEFAULT_STOP_GRACE_SECS),
        secrets: container.secrets.clone(),
        aws_endpoint_url: state.settings.ec2.endpoint_url.clone(),
    };
    Ok(HttpResponse::Ok().json(spec))
}

#[utoipa::path(post, path = "/agent/runs/{run_id}/logs", tag = "agents", summary = "Append output to the run's log", params(("run_id" = String, Path), ("X-Run-Secret" = String, Header)), request_body(content = String, content_type = "application/octet-stream"), responses((status = 200, description = "`{stored_bytes}`"), (status = 403), (status = 404)))]
pub async fn append_logs(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let run = authorize_run(&state, &req, &path).await?;
    let length = state
        .store
        .append_log(
            &run,
            &body,
            state.settings.api.max_log_bytes,
            state.settings.quotas.max_history_bytes(&run.account),
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "stored_bytes": length })))
}

#[utoipa::path(post, path = "/agent/runs/{run_id}/heartbeat", tag = "agents", summary = "The agent is alive", params(("run_id" = String, Path), ("X-Run-Secret" = String, Header)), responses((status = 200, description = "`{state}`"), (status = 403), (status = 404)))]
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
