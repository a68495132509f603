//! `GET /metrics` (and minion's `/v1/minion/metrics`): Prometheus text exposition, open like minion's.
//! Build info, the jobs each configured account holds, instances alive, and the domain events every
//! service counts in Redis (launches by market, spot pool failures, provision failures, terminations,
//! interruptions, runs ended by the sweep), and the firing lateness histogram.

use std::fmt::Write;

use actix_web::HttpResponse;

use spot_shared::store::LatenessHistogram;

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
    let by_account = state.settings.api.metrics_by_account;
    let _ = writeln!(
        out,
        "# HELP spot_scheduler_jobs Jobs stored{}.",
        if by_account { ", per account" } else { "" }
    );
    let _ = writeln!(out, "# TYPE spot_scheduler_jobs gauge");
    let mut total = 0;
    for account in &state.settings.auth.accounts {
        match state.store.count_jobs(&account.name).await {
            Ok(count) if by_account => {
                let _ = writeln!(
                    out,
                    "spot_scheduler_jobs{{account=\"{}\"}} {count}",
                    account.name.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
            Ok(count) => total += count,
            Err(err) => tracing::warn!(error = %err, "metrics: cannot count jobs"),
        }
    }
    if !by_account {
        let _ = writeln!(out, "spot_scheduler_jobs {total}");
    }
    match state.store.live_instance_count().await {
        Ok(count) => {
            let _ = writeln!(
                out,
                "# HELP spot_scheduler_instances_alive Instances not yet terminated."
            );
            let _ = writeln!(out, "# TYPE spot_scheduler_instances_alive gauge");
            let _ = writeln!(out, "spot_scheduler_instances_alive {count}");
        }
        Err(err) => tracing::warn!(error = %err, "metrics: cannot count instances"),
    }
    match state.store.event_counts().await {
        Ok(events) => {
            let _ = writeln!(
                out,
                "# HELP spot_scheduler_events_total Domain events, by kind."
            );
            let _ = writeln!(out, "# TYPE spot_scheduler_events_total counter");
            for (event, count) in events {
                let _ = writeln!(
                    out,
                    "spot_scheduler_events_total{{event=\"{event}\"}} {count}"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read event counters"),
    }
    match state.store.fire_lateness().await {
        Ok(histogram) => write_lateness(&mut out, &histogram),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the lateness histogram"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out)
}

/// The firing lateness histogram, in seconds as Prometheus has it.
fn write_lateness(out: &mut String, histogram: &LatenessHistogram) {
    let name = "spot_scheduler_fire_lateness_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long after its instant each fire's run was written."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, count) in histogram.cumulative() {
        let le = bound.map_or("+Inf".to_string(), |ms| (ms as f64 / 1000.0).to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum {}", histogram.sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {}", histogram.count);
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics (open; totals only unless `api.metrics_by_account`)", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(state: actix_web::web::Data<AppState>) -> HttpResponse {
    exposition(&state).await
}
