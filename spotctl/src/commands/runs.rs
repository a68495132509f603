//! Runs: a job's runs and instances, running a job now (and waiting for it), and a run's output.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::Output;
use crate::client::{segment, ApiClient, Body, CtlError, CtlResult};
use crate::output::{self, instant, span, text, when};

async fn runs_of(api: &ApiClient, job: &str, limit: usize) -> CtlResult<Value> {
    api.get(&format!("/v1/jobs/{}/runs?limit={limit}", segment(job)))
        .await
}

fn runs_in(answer: &Value) -> &[Value] {
    output::items(answer, "runs")
}

pub async fn list(api: &ApiClient, output: Output, job: &str, limit: usize) -> CtlResult<()> {
    let answer = runs_of(api, job, limit).await?;
    let rows = runs_in(&answer)
        .iter()
        .map(|run| {
            let transitions = &run["transitions"];
            let started = transitions["pending"].clone();
            let ended = run_end(run);
            vec![
                text(&run["id"]),
                match run["relaunches"].as_u64() {
                    Some(n) if n > 0 => format!("{} (+{n} relaunched)", text(&run["attempt"])),
                    _ => text(&run["attempt"]),
                },
                when(&run["scheduled_at"]),
                text(&run["state"]),
                text(&run["exit_code"]),
                span(instant(&started), ended),
                text(&run["instance_id"]),
                run["cost_usd"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |usd| format!("{usd:.6}")),
                text(&run["error"]),
            ]
        })
        .collect();
    let header = [
        "RUN",
        "ATTEMPT",
        "SCHEDULED",
        "STATE",
        "EXIT",
        "TOOK",
        "INSTANCE",
        "USD",
        "ERROR",
    ];
    output::print(output, &answer, &header, rows);
    Ok(())
}

/// When a run reached its terminal state, if it has.
fn run_end(run: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let state = run["state"].as_str()?;
    if is_terminal(state) {
        instant(&run["transitions"][state])
    } else {
        None
    }
}

/// `RunState::is_terminal` of spot-shared, by name (spotctl does not link the services' crate).
fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "timed_out" | "interrupted" | "cancelled" | "provision_failed"
    )
}

/// A run's notification attempts, oldest first.
pub async fn notifications(api: &ApiClient, output: Output, run: &str) -> CtlResult<()> {
    let answer = api.get(&format!("/v1/runs/{}", segment(run))).await?;
    let attempts = output::items(&answer, "notifications");
    let rows = attempts
        .iter()
        .map(|attempt| {
            vec![
                text(&attempt["event"]),
                text(&attempt["host"]),
                text(&attempt["target"]),
                text(&attempt["attempt"]),
                when(&attempt["at"]),
                text(&attempt["outcome"]),
                text(&attempt["status"]),
                text(&attempt["error"]),
            ]
        })
        .collect();
    let header = [
        "EVENT", "HOST", "TARGET", "ATTEMPT", "AT", "OUTCOME", "STATUS", "ERROR",
    ];
    output::print(output, &json!({ "notifications": attempts }), &header, rows);
    Ok(())
}

/// The copies of an array fire's run, in index order, read a page at a time.
pub async fn children(api: &ApiClient, output: Output, run: &str) -> CtlResult<()> {
    let mut copies = Vec::new();
    let mut offset = Some(0);
    while let Some(from) = offset {
        let answer = api
            .get(&format!("/v1/runs/{}/children?offset={from}", segment(run)))
            .await?;
        copies.extend(output::items(&answer, "children").iter().cloned());
        offset = answer["next_offset"].as_u64();
    }
    let rows = copies
        .iter()
        .map(|copy| {
            vec![
                text(&copy["array_index"]),
                text(&copy["id"]),
                text(&copy["state"]),
                text(&copy["attempt"]),
                text(&copy["exit_code"]),
                text(&copy["instance_id"]),
            ]
        })
        .collect();
    let header = ["INDEX", "RUN", "STATE", "ATTEMPT", "EXIT", "INSTANCE"];
    output::print(output, &json!({ "children": copies }), &header, rows);
    Ok(())
}

pub async fn instances(api: &ApiClient, output: Output, job: &str, limit: usize) -> CtlResult<()> {
    let answer = runs_of(api, job, limit).await?;
    let mut instances = Vec::new();
    for run in runs_in(&answer) {
        if let Some(id) = run["instance_id"].as_str() {
            instances.push(api.get(&format!("/v1/instances/{}", segment(id))).await?);
        }
    }
    let rows = instances
        .iter()
        .map(|instance| {
            let transitions = &instance["transitions"];
            let launched = instant(&transitions["requested"]);
            let ended = instant(&transitions["terminated"]);
            vec![
                text(&instance["id"]),
                text(&instance["run_id"]),
                text(&instance["provider"]),
                text(&instance["instance_type"]),
                text(&instance["lifecycle"]),
                text(&instance["state"]),
                when(&transitions["requested"]),
                span(launched, ended),
            ]
        })
        .collect();
    let header = [
        "INSTANCE",
        "RUN",
        "PROVIDER",
        "TYPE",
        "LIFECYCLE",
        "STATE",
        "LAUNCHED",
        "LIVED",
    ];
    output::print(output, &json!({ "instances": instances }), &header, rows);
    Ok(())
}

/// What `spotctl run` overrides of the job for that run alone (the api checks each).
#[derive(Debug, Default)]
pub struct Overrides {
    pub env: Vec<String>,
    pub cmd: Option<String>,
    pub image: Option<String>,
}

impl Overrides {
    /// The request's body: `None` when nothing is overridden.
    fn body(&self) -> Option<Value> {
        if self.env.is_empty() && self.cmd.is_none() && self.image.is_none() {
            return None;
        }
        let mut body = json!({});
        if !self.env.is_empty() {
            body["env"] = json!(self.env);
        }
        if let Some(cmd) = &self.cmd {
            body["cmd"] = json!(cmd);
        }
        if let Some(image) = &self.image {
            body["image"] = json!(image);
        }
        Some(body)
    }
}

/// Runs the job now, with `overrides` for that run. With `wait`, follows the run's states on stderr
/// until it ends and returns the container's exit code; a run its job's policy retries
/// (`will_retry`) is followed into its next attempt.
pub async fn run_now(
    api: &ApiClient,
    output: Output,
    job: &str,
    overrides: &Overrides,
    wait: bool,
    timeout: Duration,
) -> CtlResult<u8> {
    let path = format!("/v1/jobs/{}/run", segment(job));
    let answer = api
        .json(Method::POST, &path, overrides.body().map(Body::Json))
        .await?;
    if !wait {
        let row = vec![text(&answer["job_id"]), when(&answer["scheduled_at"])];
        output::print(output, &answer, &["JOB", "RUNS AT"], vec![row]);
        return Ok(0);
    }
    let scheduled_at = instant(&answer["scheduled_at"])
        .ok_or_else(|| CtlError::Other("the api gave no scheduled_at".into()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = 0;
    let mut following = 1;
    let mut retry_announced = false;
    loop {
        // The run of that instant with the highest attempt (retries are new attempts of it).
        let runs = runs_of(api, job, 20).await?;
        let run = runs_in(&runs)
            .iter()
            .filter(|run| instant(&run["scheduled_at"]) == Some(scheduled_at))
            .max_by_key(|run| run["attempt"].as_u64());
        if let Some(run) = run {
            let attempt = run["attempt"].as_u64().unwrap_or(1);
            if attempt != following {
                // A retry: a new run of the same instant.
                eprintln!();
                eprint!("attempt {attempt}: ");
                following = attempt;
                shown = 0;
                retry_announced = false;
            }
            shown = show_progress(run, shown);
            let state = run["state"].as_str().unwrap_or_default();
            if is_terminal(state) && run["will_retry"] == true && !retry_announced {
                eprint!(" (the job's policy retries it)");
                retry_announced = true;
            }
            if is_terminal(state) && run["will_retry"] != true {
                eprintln!();
                if output == Output::Json {
                    output::print(output, run, &[], Vec::new());
                }
                return Ok(exit_code_of(run));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CtlError::Other(format!(
                "gave up waiting after {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the states the run has reached since the last call, in order: `pending → provisioning → ...`.
fn show_progress(run: &Value, shown: usize) -> usize {
    let mut states: Vec<(&str, &str)> = run["transitions"]
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(state, at)| Some((state.as_str(), at.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    states.sort_by_key(|(_, at)| *at);
    let mut stderr = std::io::stderr().lock();
    if shown == 0 && !states.is_empty() {
        let _ = write!(stderr, "run {}: ", text(&run["id"]));
    }
    for (i, (state, _)) in states.iter().enumerate().skip(shown) {
        let arrow = if i == 0 { "" } else { " → " };
        let _ = write!(stderr, "{arrow}{state}");
    }
    let _ = stderr.flush();
    states.len().max(shown)
}

/// The container's exit code as the process's (255 at most; 1 when the run ended without one).
fn exit_code_of(run: &Value) -> u8 {
    match run["exit_code"].as_i64() {
        Some(code) => u8::try_from(code.clamp(0, 255)).unwrap_or(1),
        None => {
            eprintln!(
                "the run ended {} without an exit code{}",
                text(&run["state"]),
                run["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            1
        }
    }
}

pub async fn logs(api: &ApiClient, run: &str, follow: bool) -> CtlResult<()> {
    let path = format!("/v1/runs/{}/logs?follow={follow}", segment(run));
    let mut response = api.send(Method::GET, &path, None).await?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| CtlError::Other(format!("the output stream broke: {err}")))?
    {
        // Written as it comes: a followed run's output shows while the run goes on.
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&chunk)
            .and_then(|_| stdout.flush())
            .map_err(|err| CtlError::Other(err.to_string()))?;
    }
    Ok(())
}

const BACKFILL_HEADER: [&str; 7] = [
    "BACKFILL",
    "FROM",
    "TO",
    "RUNS",
    "WAITING",
    "UNDER WAY",
    "STATE",
];

fn backfill_row(backfill: &Value) -> Vec<String> {
    vec![
        text(&backfill["id"]),
        when(&backfill["from"]),
        when(&backfill["to"]),
        text(&backfill["total"]),
        text(&backfill["waiting"]),
        text(&backfill["under_way"]),
        text(&backfill["state"]),
    ]
}

/// Backfills the job over `range` (RFC 3339 instants), `concurrency` runs at a time.
pub async fn backfill(
    api: &ApiClient,
    output: Output,
    job: &str,
    range: (&str, &str),
    concurrency: u32,
) -> CtlResult<()> {
    let path = format!("/v1/jobs/{}/backfill", segment(job));
    let body = json!({"from": range.0, "to": range.1, "concurrency": concurrency});
    let answer = api
        .json(Method::POST, &path, Some(Body::Json(body)))
        .await?;
    output::print(
        output,
        &answer,
        &BACKFILL_HEADER,
        vec![backfill_row(&answer)],
    );
    Ok(())
}

/// The job's backfills, or, with `cancel`, that one cancelled as a whole.
pub async fn backfills(
    api: &ApiClient,
    output: Output,
    job: &str,
    cancel: Option<&str>,
) -> CtlResult<()> {
    if let Some(backfill) = cancel {
        let path = format!(
            "/v1/jobs/{}/backfills/{}/cancel",
            segment(job),
            segment(backfill)
        );
        let answer = api.json(Method::POST, &path, None).await?;
        output::print(
            output,
            &answer,
            &BACKFILL_HEADER,
            vec![backfill_row(&answer)],
        );
        return Ok(());
    }
    let answer = api
        .json(
            Method::GET,
            &format!("/v1/jobs/{}/backfills", segment(job)),
            None,
        )
        .await?;
    let rows = output::items(&answer, "backfills")
        .iter()
        .map(backfill_row)
        .collect();
    output::print(output, &answer, &BACKFILL_HEADER, rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_containers() {
        assert_eq!(exit_code_of(&json!({"exit_code": 3, "state": "failed"})), 3);
        assert_eq!(
            exit_code_of(&json!({"exit_code": 0, "state": "succeeded"})),
            0
        );
        assert_eq!(
            exit_code_of(&json!({"exit_code": 300, "state": "failed"})),
            255
        );
        assert_eq!(
            exit_code_of(&json!({"exit_code": null, "state": "provision_failed"})),
            1
        );
    }
}
