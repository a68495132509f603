//! `lifecycle-200`: how long an instance lives beyond its job. 200 container jobs of one second on the
//! local provider, due in waves of 20; once every instance is terminated, the overheads are read from
//! the recorded transitions of each run and its instance:
//! - boot: instance requested → running (the agent reported in);
//! - exit to terminate: the run's end (the agent's callback with the exit code) → the instance
//!   `terminating` (the api has asked the reaper to terminate it);
//! - terminate to terminated: `terminating` → `terminated` (the reaper's terminate call done);
//! - outlived: the run's end → `terminated`, what the instance costs past its job.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::{merge, percentile, schedule_jobs, Options, Stack, KEY};

const WAVE: usize = 20;
/// Seconds between waves: the job's second, a boot, the hand-over and some slack.
const WAVE_GAP_SECS: i64 = 4;

pub async fn run(bin_dir: &Path, jobs: usize, options: &Options) -> anyhow::Result<Value> {
    let image = spot_tests::image::busybox_image().await;
    let stack = Stack::start(bin_dir, options).await?;
    let start = Utc::now() + chrono::Duration::seconds(5);
    let (ids, _) = schedule_jobs(&stack, jobs, options.clients.min(WAVE), |i| {
        let due = start + chrono::Duration::seconds(WAVE_GAP_SECS * (i / WAVE) as i64);
        json!({
            "schedule": due.to_rfc3339(),
            "runner": {"type": "container", "image": image, "cmd": "sleep 1"},
        })
    })
    .await?;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{}{path}", stack.api);
        async move {
            let response = client.get(url).header("X-Auth-Token", KEY).send().await?;
            anyhow::Ok(response.json::<Value>().await?)
        }
    };

    // Every run ended and every instance terminated.
    let limit = Duration::from_secs(60 + WAVE_GAP_SECS as u64 * (jobs / WAVE) as u64 * 3);
    let began = Instant::now();
    let mut samples = Vec::new();
    let mut pending: Vec<String> = ids.clone();
    while !pending.is_empty() {
        if began.elapsed() > limit {
            bail!("{} jobs still running after {limit:?}", pending.len());
        }
        let mut still = Vec::new();
        for id in pending {
            let runs = get(format!("/v1/jobs/{id}/runs")).await?;
            let run = runs["runs"][0].clone();
            let instance = match run["instance_id"].as_str() {
                Some(instance) => get(format!("/v1/instances/{instance}")).await?,
                None => Value::Null,
            };
            match overheads(&run, &instance) {
                Some(sample) => samples.push(sample),
                None => still.push(id),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let failed = samples.iter().filter(|s| !s.succeeded).count();
    let figures = |pick: fn(&Overheads) -> i64| {
        let mut values: Vec<i64> = samples.iter().map(pick).collect();
        values.sort_unstable();
        json!({
            "p50": percentile(&values, 50.0),
            "p99": percentile(&values, 99.0),
            "max": values.last().copied().unwrap_or(0),
        })
    };
    let mut result = json!({
        "scenario": "lifecycle-200",
        "jobs": jobs,
        "runs_not_succeeded": failed,
        "boot_ms": figures(|s| s.boot_ms),
        "exit_to_terminate_ms": figures(|s| s.exit_to_terminate_ms),
        "terminate_to_terminated_ms": figures(|s| s.terminate_to_terminated_ms),
        "outlived_job_ms": figures(|s| s.outlived_ms),
    });
    merge(&mut result, json!(stack.peak_rss()));
    stack.stop();
    Ok(result)
}

struct Overheads {
    succeeded: bool,
    boot_ms: i64,
    exit_to_terminate_ms: i64,
    terminate_to_terminated_ms: i64,
    outlived_ms: i64,
}

/// The overheads of a run that has ended on an instance now terminated; `None` until then.
fn overheads(run: &Value, instance: &Value) -> Option<Overheads> {
    let at = |value: &Value| value.as_str()?.parse::<DateTime<Utc>>().ok();
    let state = run["state"].as_str()?;
    let ended = match state {
        "succeeded" | "failed" | "timed_out" => at(&run["transitions"][state])?,
        _ => return None,
    };
    let transitions = &instance["transitions"];
    let requested = at(&transitions["requested"])?;
    let running = at(&transitions["running"])?;
    let terminated = at(&transitions["terminated"])?;
    // An instance ended by the reaper alone (a sweep) has no `terminating` of the api's.
    let terminating = at(&transitions["terminating"]).unwrap_or(terminated);
    let ms = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds();
    Some(Overheads {
        succeeded: state == "succeeded",
        boot_ms: ms(requested, running),
        exit_to_terminate_ms: ms(ended, terminating),
        terminate_to_terminated_ms: ms(terminating, terminated),
        outlived_ms: ms(ended, terminated),
    })
}
