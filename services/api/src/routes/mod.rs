//! The routes, one module per surface.

mod agent;
mod callback;
mod cronjob;
mod health;
mod hrm;
mod input;
pub mod metrics;
mod minion;
pub mod openapi;
mod operations;
mod overview;
mod paging;
mod quarantine;
mod resources;
mod simple;
mod ui;
mod usage;

use actix_web::{web, HttpResponse};
use serde_json::json;

pub(crate) use input::{parse_json, parse_query, Query};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthcheck", web::get().to(health::healthcheck))
        .route("/schedule", web::post().to(simple::schedule))
        .route("/list", web::get().to(simple::list))
        .route("/status/{id}", web::get().to(simple::status))
        .route("/callback", web::post().to(callback::callback))
        .route("/agent/runs/{run_id}", web::get().to(agent::spec))
        .route(
            "/agent/runs/{run_id}/logs",
            web::post().to(agent::append_logs),
        )
        .route(
            "/agent/runs/{run_id}/heartbeat",
            web::post().to(agent::heartbeat),
        )
        .route("/openapi.json", web::get().to(openapi::document))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/v1/overview", web::get().to(overview::overview))
        .route("/v1/usage", web::get().to(usage::usage))
        .configure(ui::configure)
        .configure(minion::configure)
        .route("/JobScheduler", web::post().to(operations::operation))
        .route("/JobScheduler", web::get().to(operations::list))
        .configure(cronjob::configure)
        .configure(hrm::configure)
        .configure(resources::configure)
        .configure(quarantine::configure)
        .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "status": "error",
        "error": "not_found",
        "message": "no such route",
    }))
}
