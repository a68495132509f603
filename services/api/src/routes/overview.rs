//! `GET /v1/overview`: what the dashboard's overview draws besides `/metrics`: fires per minute over
//! the last hour, instances alive, and the messages waiting in the dead-letter queue.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

/// The minutes the fires chart covers.
const MINUTES: usize = 60;

#[utoipa::path(get, path = "/v1/overview", tag = "operations", summary = "Fires per minute over the last hour (all accounts), instances alive, dead letters waiting", security(("api_key" = [])), responses((status = 200, description = "`{fires_per_minute: [{minute, fires}], live_instances, dead_letters, quarantined_jobs}`; `dead_letters` is null while RabbitMQ is away"), (status = 403)))]
pub async fn overview(_caller: Caller, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let minutes = state.store.fires_per_minute(MINUTES).await?;
    let live_instances = state.store.live_instance_count().await?;
    let quarantined = state.store.quarantined_jobs().await?.len();
    let dead_queue = state.broker.topology().dead_letters();
    // The broker may be away while Redis answers: the chart says so rather than failing the page.
    let dead_letters = match state.broker.message_count(&dead_queue).await {
        Ok(count) => Some(count),
        Err(err) => {
            tracing::warn!(error = %err, "overview: dead letters not counted");
            None
        }
    };
    let minutes: Vec<_> = minutes
        .into_iter()
        .map(|(minute, fires)| json!({ "minute": minute, "fires": fires }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "fires_per_minute": minutes,
        "live_instances": live_instances,
        "dead_letters": dead_letters,
        "quarantined_jobs": quarantined,
    })))
}
