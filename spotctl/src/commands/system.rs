//! The system as a whole: health and the figures of `/metrics`; and shell completions.

use clap::CommandFactory;
use serde_json::{json, Value};

use crate::cli::{Cli, Output};
use crate::client::{ApiClient, CtlError, CtlResult};
use crate::output;

/// `/v1/usage` as a table: one row per job, then the account's total and its budget.
/// The audit log's entries, newest first: `filters` are `job`, `from`, `to`.
pub async fn audit(
    api: &ApiClient,
    output: Output,
    filters: [(&str, Option<String>); 3],
    limit: usize,
) -> CtlResult<()> {
    let mut query = vec![format!("limit={limit}")];
    for (name, value) in filters {
        if let Some(value) = value {
            query.push(format!("{name}={}", crate::client::segment(&value)));
        }
    }
    let answer = api.get(&format!("/v1/audit?{}", query.join("&"))).await?;
    let rows = output::items(&answer, "entries")
        .iter()
        .map(|entry| {
            let changed: Vec<&str> = entry["changes"]
                .as_object()
                .map(|changes| changes.keys().map(String::as_str).collect())
                .unwrap_or_default();
            vec![
                output::when(&entry["at"]),
                output::text(&entry["action"]),
                output::text(&entry["job_id"]),
                output::text(&entry["surface"]),
                output::text(&entry["key"]),
                if changed.is_empty() {
                    "-".to_string()
                } else {
                    changed.join(", ")
                },
            ]
        })
        .collect();
    let header = ["AT", "ACTION", "JOB", "SURFACE", "KEY", "CHANGED"];
    output::print(output, &answer, &header, rows);
    Ok(())
}

pub async fn usage(
    api: &ApiClient,
    output: Output,
    from: Option<String>,
    to: Option<String>,
) -> CtlResult<()> {
    let mut query = Vec::new();
    for (name, value) in [("from", from), ("to", to)] {
        if let Some(value) = value {
            query.push(format!("{name}={}", crate::client::segment(&value)));
        }
    }
    let path = match query.is_empty() {
        true => "/v1/usage".to_string(),
        false => format!("/v1/usage?{}", query.join("&")),
    };
    let report = api.get(&path).await?;
    let usd = |value: &Value| match value.as_f64() {
        Some(usd) => format!("{usd:.6}"),
        None => "-".into(),
    };
    let mut rows = Vec::new();
    for group in output::items(&report, "groups") {
        for job in output::items(group, "jobs") {
            rows.push(vec![
                output::text(&group["group"]),
                output::text(&job["job_id"]),
                output::text(&job["runs"]),
                output::text(&job["instance_seconds"]),
                usd(&job["usd"]),
            ]);
        }
    }
    rows.push(vec![
        "total".into(),
        format!(
            "{} to {}",
            output::text(&report["from"]),
            output::text(&report["to"])
        ),
        output::text(&report["runs"]),
        output::text(&report["instance_seconds"]),
        usd(&report["usd"]),
    ]);
    if !report["budget_usd"].is_null() {
        rows.push(vec![
            "budget".into(),
            format!(
                "{} USD a month, {} spent",
                usd(&report["budget_usd"]),
                usd(&report["month_spent_usd"])
            ),
            String::new(),
            String::new(),
            format!("{} left", usd(&report["budget_left_usd"])),
        ]);
    }
    let header = ["GROUP", "JOB", "RUNS", "INSTANCE-SECONDS", "USD"];
    output::print(output, &report, &header, rows);
    Ok(())
}

pub async fn status(api: &ApiClient, output: Output) -> CtlResult<u8> {
    // 503 is an answer here: the body says which dependency is down.
    let health = match api.get("/healthcheck").await {
        Ok(body) => body,
        Err(CtlError::Api { status, message }) if status.as_u16() == 503 => {
            json!({ "status": "degraded", "message": message })
        }
        Err(err) => return Err(err),
    };
    let metrics = Metrics::parse(&api.text("/metrics").await?);
    let lateness = "spot_scheduler_fire_lateness_seconds";
    let fires = metrics.sum(&format!("{lateness}_count"));
    let summary = json!({
        "health": health,
        "jobs": metrics.sum("spot_scheduler_jobs"),
        "instances_alive": metrics.sum("spot_scheduler_instances_alive"),
        "fires": fires,
        "lateness_p50_le_seconds": metrics.quantile_bound(lateness, 0.5),
        "lateness_p99_le_seconds": metrics.quantile_bound(lateness, 0.99),
    });
    let bound = |key: &str| match summary[key].as_f64() {
        Some(seconds) => format!("≤ {} ms", seconds * 1000.0),
        None => "-".into(),
    };
    let rows = vec![
        vec!["api".into(), output::text(&summary["health"]["status"])],
        vec!["redis".into(), output::text(&summary["health"]["redis"])],
        vec![
            "rabbitmq".into(),
            output::text(&summary["health"]["rabbitmq"]),
        ],
        vec!["jobs".into(), output::text(&summary["jobs"])],
        vec![
            "instances alive".into(),
            output::text(&summary["instances_alive"]),
        ],
        vec!["fires recorded".into(), output::text(&summary["fires"])],
        vec![
            "firing lateness p50".into(),
            bound("lateness_p50_le_seconds"),
        ],
        vec![
            "firing lateness p99".into(),
            bound("lateness_p99_le_seconds"),
        ],
    ];
    output::print(output, &summary, &[], rows);
    // Degraded is a failure for scripts that check it.
    Ok(if summary["health"]["status"] == "live" {
        0
    } else {
        1
    })
}

pub fn completions(shell: clap_complete::Shell) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "spotctl", &mut std::io::stdout());
}

/// Samples of a Prometheus text exposition: name, labels as written, value.
struct Metrics(Vec<(String, String, f64)>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Metrics(samples)
    }

    fn sum(&self, name: &str) -> Value {
        let values: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .collect();
        if values.is_empty() {
            Value::Null
        } else {
            json!(values.iter().sum::<f64>())
        }
    }

    /// The upper bound of the histogram bucket holding quantile `q` (buckets summed over labels).
    fn quantile_bound(&self, histogram: &str, q: f64) -> Value {
        let bucket = format!("{histogram}_bucket");
        let mut bounds: Vec<(f64, f64)> = Vec::new();
        for (name, labels, count) in &self.0 {
            if *name != bucket {
                continue;
            }
            let Some(le) = labels
                .split(',')
                .find_map(|label| label.strip_prefix("le=\""))
                .map(|le| le.trim_end_matches('"'))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            match bounds.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, total)) => *total += count,
                None => bounds.push((le, *count)),
            }
        }
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bounds.last().map(|(_, count)| *count).unwrap_or(0.0);
        if total == 0.0 {
            return Value::Null;
        }
        bounds
            .iter()
            .find(|(_, count)| *count >= q * total)
            .filter(|(bound, _)| bound.is_finite())
            .map(|(bound, _)| json!(bound))
            .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_cumulative_buckets() {
        let metrics = Metrics::parse(
            "# TYPE x histogram\n\
             x_bucket{le=\"0.005\"} 90\n\
             x_bucket{le=\"0.01\"} 99\n\
             x_bucket{le=\"0.1\"} 100\n\
             x_bucket{le=\"+Inf\"} 100\n\
             x_count 100\n",
        );
        assert_eq!(metrics.quantile_bound("x", 0.5), json!(0.005));
        assert_eq!(metrics.quantile_bound("x", 0.99), json!(0.01));
        assert_eq!(metrics.sum("x_count"), json!(100.0));
        assert_eq!(metrics.sum("absent"), Value::Null);
    }
}
