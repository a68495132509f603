//! The routes, one module per surface.

mod agent;
mod arrays;
mod audit;
mod backfills;
mod callback;
mod cronjob;
mod health;
mod hrm;
mod input;
mod job_batch;
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

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

pub(crate) use input::{parse_json, parse_query, parse_value, Query};

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
        .configure(job_batch::configure)
        .configure(resources::configure)
        .configure(backfills::configure)
        .configure(arrays::configure)
        .configure(audit::configure)
        .configure(quarantine::configure)
        .default_service(web::to(not_found));
}

/// Every documented route's path pattern and the methods it answers, read from the OpenAPI document
/// (which `tests/fuzz.rs` holds to what is served): how a request that matched no route is told
/// apart as a known path with another method (405 with `Allow`) from an unknown path (404).
static KNOWN_ROUTES: LazyLock<Vec<(ResourceDef, String)>> = LazyLock::new(|| {
    use utoipa::OpenApi;
    openapi::ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods: Vec<&str> = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
                ("OPTIONS", item.options.is_some()),
            ]
            .into_iter()
            .filter_map(|(method, served)| served.then_some(method))
            .collect();
            (ResourceDef::new(path.as_str()), methods.join(", "))
        })
        .collect()
});

/// What a request no route took gets: 405 with `Allow` for a known path, 404 otherwise.
pub(crate) async fn not_found(req: HttpRequest) -> HttpResponse {
    if let Some((_, allow)) = KNOWN_ROUTES
        .iter()
        .find(|(route, _)| route.is_match(req.path()))
    {
        return HttpResponse::MethodNotAllowed()
            .insert_header((actix_web::http::header::ALLOW, allow.as_str()))
            .json(json!({
                "status": "error",
                "error": "method_not_allowed",
                "message": format!("{} is not served here; allowed: {allow}", req.method()),
            }));
    }
    HttpResponse::NotFound().json(json!({
        "status": "error",
        "error": "not_found",
        "message": "no such route",
    }))
}
