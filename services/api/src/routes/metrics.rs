//! `GET /metrics` (and minion's `/v1/minion/metrics`): Prometheus text exposition, open like minion's.
//! Build info, the jobs each configured account holds, instances alive, and the domain events every
//! service counts in Redis (launches by market, spot pool failures, provision failures, terminations,
//! interruptions, runs ended by the sweep), and the firing lateness histogram.

use std::collections::BTreeMap;
use std::fmt::Write;

use actix_web::HttpResponse;

use spot_shared::store::LatenessHistogram;
use spot_shared::supervise::RESTART_EVENT_PREFIX;

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
                    label_value(&account.name)
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
    match state.store.quarantined_jobs().await {
        Ok(jobs) => {
            let _ = writeln!(
                out,
                "# HELP spot_scheduler_jobs_quarantined Jobs set aside because their stored record cannot be read (GET /v1/quarantine)."
            );
            let _ = writeln!(out, "# TYPE spot_scheduler_jobs_quarantined gauge");
            let _ = writeln!(out, "spot_scheduler_jobs_quarantined {}", jobs.len());
        }
        Err(err) => tracing::warn!(error = %err, "metrics: cannot count quarantined jobs"),
    }
    match state.store.event_counts().await {
        Ok(events) => {
            let _ = writeln!(
                out,
                "# HELP spot_scheduler_events_total Domain events, by kind."
            );
            let _ = writeln!(out, "# TYPE spot_scheduler_events_total counter");
            let (restarts, events): (Vec<_>, Vec<_>) = events
                .into_iter()
                .partition(|(event, _)| event.starts_with(RESTART_EVENT_PREFIX));
            for (event, count) in events {
                let _ = writeln!(
                    out,
                    "spot_scheduler_events_total{{event=\"{event}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP spot_scheduler_loop_restarts_total Background loops (pump, reconciler, sweeps, leases) that died and were started again, by loop."
            );
            let _ = writeln!(out, "# TYPE spot_scheduler_loop_restarts_total counter");
            for (event, count) in restarts {
                let name = &event[RESTART_EVENT_PREFIX.len()..];
                let _ = writeln!(
                    out,
                    "spot_scheduler_loop_restarts_total{{loop=\"{name}\"}} {count}"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read event counters"),
    }
    match state.store.quota_refusals().await {
        Ok(refusals) => write_quota_refusals(&mut out, &refusals, by_account),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the quota refusals"),
    }
    match state.store.cost_counters().await {
        Ok(counters) => write_costs(&mut out, &counters, by_account),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the cost counters"),
    }
    match state.store.overheads().await {
        Ok(phases) => write_overheads(&mut out, &phases),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the overheads"),
    }
    match state.store.fire_lateness().await {
        Ok(histogram) => write_lateness(&mut out, &histogram),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the lateness histogram"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(out)
}

/// A Prometheus label value, escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Refusals over each quota; per account too if `api.metrics_by_account`.
fn write_quota_refusals(
    out: &mut String,
    refusals: &BTreeMap<(String, String), u64>,
    by_account: bool,
) {
    let name = "spot_scheduler_quota_refusals_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests and runs refused over a quota, by quota{}.",
        if by_account { " and account" } else { "" }
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    if by_account {
        for ((quota, account), count) in refusals {
            let account = label_value(account);
            let _ = writeln!(
                out,
                "{name}{{quota=\"{quota}\",account=\"{account}\"}} {count}"
            );
        }
        return;
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for ((quota, _), count) in refusals {
        *totals.entry(quota).or_default() += count;
    }
    for (quota, count) in totals {
        let _ = writeln!(out, "{name}{{quota=\"{quota}\"}} {count}");
    }
}

/// Cost and instance-seconds of terminated instances, by market (and account if
/// `api.metrics_by_account`).
fn write_costs(
    out: &mut String,
    counters: &BTreeMap<(String, String), (u64, u64)>,
    by_account: bool,
) {
    let mut totals: BTreeMap<(String, &str), (u64, u64)> = BTreeMap::new();
    for ((account, market), (nano, secs)) in counters {
        let account = if by_account {
            label_value(account)
        } else {
            String::new()
        };
        let entry = totals.entry((account, market.as_str())).or_default();
        entry.0 += nano;
        entry.1 += secs;
    }
    let labels = |account: &str, market: &str| match by_account {
        true => format!("account=\"{account}\",market=\"{}\"", label_value(market)),
        false => format!("market=\"{}\"", label_value(market)),
    };
    let _ = writeln!(
        out,
        "# HELP spot_scheduler_cost_usd_total What terminated instances cost, in USD."
    );
    let _ = writeln!(out, "# TYPE spot_scheduler_cost_usd_total counter");
    for ((account, market), (nano, _)) in &totals {
        let usd = spot_shared::pricing::usd(*nano);
        let _ = writeln!(
            out,
            "spot_scheduler_cost_usd_total{{{}}} {usd}",
            labels(account, market)
        );
    }
    let _ = writeln!(
        out,
        "# HELP spot_scheduler_instance_seconds_total Seconds billed for terminated instances."
    );
    let _ = writeln!(out, "# TYPE spot_scheduler_instance_seconds_total counter");
    for ((account, market), (_, secs)) in &totals {
        let _ = writeln!(
            out,
            "spot_scheduler_instance_seconds_total{{{}}} {secs}",
            labels(account, market)
        );
    }
}

/// The overhead around each job, by phase: `boot` (launch to the agent's first word),
/// `exit_to_terminate` (the run's end to the terminate call), `terminate_to_terminated`.
fn write_overheads(out: &mut String, phases: &BTreeMap<String, (u64, u64)>) {
    let name = "spot_scheduler_instance_overhead_seconds";
    let _ = writeln!(out, "# HELP {name} Instance time around the job, by phase.");
    let _ = writeln!(out, "# TYPE {name} summary");
    for (phase, (sum_ms, count)) in phases {
        let phase = label_value(phase);
        let _ = writeln!(
            out,
            "{name}_sum{{phase=\"{phase}\"}} {}",
            *sum_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{phase=\"{phase}\"}} {count}");
    }
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
