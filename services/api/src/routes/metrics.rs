//! `GET /metrics` (and minion's `/v1/minion/metrics`): Prometheus text exposition, open like minion's.
//! Today: build info and the jobs each configured account holds.

use std::fmt::Write;

use actix_web::HttpResponse;

use crate::state::AppState;

pub async fn exposition(state: &AppState) -> HttpResponse {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP spot_scheduler_info Build information.");
    let _ = writeln!(out, "# TYPE spot_scheduler_info gauge");
    let _ = writeln!(
        out,
        "spot_scheduler_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "# HELP spot_scheduler_jobs Jobs stored, per account.");
    let _ = writeln!(out, "# TYPE spot_scheduler_jobs gauge");
    for account in &state.settings.auth.accounts {
        match state.store.count_jobs(&account.name).await {
            Ok(count) => {
                let _ = writeln!(
                    out,
                    "spot_scheduler_jobs{{account=\"{}\"}} {count}",
                    account.name.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
            Err(err) => tracing::warn!(error = %err, "metrics: cannot count jobs"),
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out)
}

pub async fn metrics(state: actix_web::web::Data<AppState>) -> HttpResponse {
    exposition(&state).await
}
