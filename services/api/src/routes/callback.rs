//! `POST /callback`: the agent reports its instance ready (`update`) or its job ended (`terminate`).
//! Seed 003's body, authenticated by the run's secret; a caller can touch only its own run and instance
//! (seed 004 let anyone terminate anything).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use spot_shared::messages::CallbackRequest;
use spot_shared::model::{InstanceState, RunState};
use spot_shared::store::Moved;
use spot_shared::{policy, Error};

use crate::auth::authorize_run;
use crate::error::ApiResult;
use crate::jobs;
use crate::routes::parse_json;
use crate::state::AppState;

#[utoipa::path(post, path = "/callback", tag = "agents", summary = "An agent reports its instance ready or its job ended", request_body = spot_shared::messages::CallbackRequest, params(("X-Run-Secret" = String, Header, description = "The run's secret")), responses((status = 200), (status = 400), (status = 403, description = "Not this run's secret or instance"), (status = 409, description = "Illegal transition")))]
pub async fn callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let callback: CallbackRequest = parse_json(&body)?;
    if !matches!(callback.action.as_str(), "update" | "terminate") {
        return Err(Error::invalid("action", "must be \"update\" or \"terminate\"").into());
    }
    let instance_id = callback
        .instance_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::invalid("instance_id", "is required"))?;

    // The instance names the run; the secret must be that run's, and every id given must agree.
    // Worded as `authorize_run` words a wrong secret: an unknown instance and a wrong secret are
    // answered alike, so the answer tells nothing about which instances exist.
    let refused = || Error::forbidden("the run's secret is required and must match");
    let Some(instance) = state.store.get_instance(instance_id).await? else {
        // An agent may report in before the provisioner has recorded its instance (EC2 answered the
        // launch, the record is being written): its own run, still launching, is told to retry.
        if let Some(run_id) = callback.run_id.as_deref() {
            let run = authorize_run(&state, &req, run_id).await?;
            if matches!(run.state, RunState::Pending | RunState::Provisioning) {
                return Err(Error::conflict(format!(
                    "run {run_id} is still being launched; retry"
                ))
                .into());
            }
        }
        return Err(refused().into());
    };
    if callback
        .run_id
        .as_deref()
        .is_some_and(|id| id != instance.run_id)
    {
        return Err(refused().into());
    }
    let run = authorize_run(&state, &req, &instance.run_id).await?;
    if run.instance_id.as_deref() != Some(instance_id)
        || callback
            .job_id
            .as_deref()
            .is_some_and(|id| id != run.job_id)
    {
        return Err(refused().into());
    }

    match callback.action.as_str() {
        "update" => {
            let mut fields = Vec::new();
            if let Some(container_id) = &callback.container_id {
                fields.push(("container_id", container_id.clone()));
            }
            state
                .store
                .advance_run(&run.id, RunState::Running, &fields)
                .await?;
            if instance.state == InstanceState::Requested {
                state
                    .store
                    .advance_instance(
                        instance_id,
                        InstanceState::Running,
                        &[("ready", "1".into())],
                    )
                    .await?;
            }
            Ok(HttpResponse::Ok().json(json!({
                "status": "ok",
                "message": "instance marked ready",
                "run_state": RunState::Running,
            })))
        }
        _ => {
            let (end_state, mut fields) = ending(&callback);
            if let Some(container_id) = &callback.container_id {
                fields.push(("container_id", container_id.clone()));
            }
            let job = state.store.get_job(&run.job_id).await?;
            if end_state == RunState::Interrupted && run.state == RunState::Booting {
                // Reclaimed before the user's container started: not the job's failure, and not an
                // attempt. The instance goes, and the run is launched again as the same attempt.
                state.store.note_event("spot_interruption", 1).await;
                jobs::terminate_instance(&state, &run, "reclaimed before its container started", 0)
                    .await?;
                let why =
                    format!("instance {instance_id} was reclaimed before the container started");
                let max = state.settings.provisioner.max_relaunches;
                let outcome = policy::relaunch(&state.store, job.as_ref(), &run, &why, max).await?;
                tracing::info!(run_id = %run.id, instance_id, ?outcome, "reclaimed before the container started");
                return Ok(HttpResponse::Ok().json(json!({
                    "status": "ok",
                    "message": "instance termination requested; the run is launched again",
                    "relaunched": matches!(outcome, policy::Relaunched::Armed(_)),
                })));
            }
            match policy::end_run(&state.store, job.as_ref(), &run, end_state, &fields).await {
                Ok(Moved::From(_)) => {
                    if end_state == RunState::Interrupted {
                        state.store.note_event("spot_interruption", 1).await;
                    }
                }
                Ok(Moved::AlreadyThere) => {}
                // A repeated terminate after the run ended some other way: still end the instance.
                Err(err)
                    if run.state.is_terminal() && err.code == spot_shared::ErrorCode::Conflict => {}
                Err(err) => return Err(err.into()),
            }
            jobs::terminate_instance(&state, &run, &format!("run {end_state}"), 0).await?;
            tracing::info!(run_id = %run.id, instance_id, state = %end_state, "run ended; termination requested");
            Ok(HttpResponse::Ok().json(json!({
                "status": "ok",
                "message": "instance termination requested",
                "run_state": end_state,
            })))
        }
    }
}

/// The end state a terminate callback reports, and the fields to record with it.
fn ending(callback: &CallbackRequest) -> (RunState, Vec<(&'static str, String)>) {
    let mut fields = Vec::new();
    if let Some(code) = callback.exit_code {
        fields.push(("exit_code", code.to_string()));
    }
    if let Some(error) = &callback.error {
        fields.push(("error", error.chars().take(4096).collect()));
    }
    let state = if callback.interrupted == Some(true) {
        RunState::Interrupted
    } else if callback.timed_out == Some(true) {
        RunState::TimedOut
    } else if callback.exit_code == Some(0) && callback.error.is_none() {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    (state, fields)
}
