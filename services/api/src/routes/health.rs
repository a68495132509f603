//! `GET /healthcheck`: open to all; says whether Redis and RabbitMQ answer.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

#[utoipa::path(get, path = "/healthcheck", tag = "simple", summary = "Whether Redis and RabbitMQ answer (open)", responses((status = 200), (status = 503)))]
pub async fn healthcheck(state: web::Data<AppState>) -> HttpResponse {
    // The error's text stays in the log: it would tell an anonymous caller hosts and ports.
    let redis = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(err) => {
            tracing::warn!(error = %err, "healthcheck: redis does not answer");
            "not answering".to_string()
        }
    };
    let rabbitmq = if state.broker.is_connected() {
        "ok".to_string()
    } else {
        "not connected".to_string()
    };
    let healthy = redis == "ok" && rabbitmq == "ok";
    let body = json!({
        "status": if healthy { "live" } else { "degraded" },
        "redis": redis,
        "rabbitmq": rabbitmq,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
