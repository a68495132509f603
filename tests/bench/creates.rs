//! `creates`: how fast one api process accepts one-shot jobs, one per request (`POST /v1/jobs`,
//! `--clients` at once, 64 by default) and a thousand per request (`POST /v1/jobs:batch`, 4 at
//! once), both through the lean client of [`crate::http_load`], beside Redis's own rate in the same run (`redis-benchmark -t set -c 50`): these machines
//! differ by half from week to week, so the create rate is also given as a share of it. The jobs
//! fall due in 30 days, so nothing fires meanwhile. Batch bodies are serialised before the clock
//! starts; single requests are built as they go, as a client would.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::json;

use crate::{
    by_command, cpu_now, dummy_job, http_load, schedule_jobs, tenths_of_us_per, Options, Stack, KEY,
};

/// Jobs per batch request, the route's maximum.
const BATCH: usize = 1000;
/// Batch requests in flight at once.
const BATCH_CLIENTS: usize = 4;

pub async fn run(
    bin_dir: &Path,
    jobs: usize,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    if options.cluster {
        bail!("creates compares with one Redis node's SET rate: run it without --cluster");
    }
    let redis_set_per_s = redis_set_rate()?;
    let stack = Stack::start(bin_dir, options).await?;
    let due = (Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let before_singles = cpu_now(&stack).await?;
    let (_, single_per_s) =
        schedule_jobs(&stack, jobs, options.clients, |_| dummy_job(due.clone())).await?;
    let before_batches = cpu_now(&stack).await?;
    let batch_jobs = jobs * 5;
    let batch_per_s = schedule_batches(&stack, batch_jobs, &due).await?;
    let after_batches = cpu_now(&stack).await?;
    // Redis's and the api's CPU per job, each phase: which of them a rate is bound by.
    let per_job = |before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, n: usize| {
        let spent = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
        json!({
            "redis": tenths_of_us_per(spent("redis"), n),
            "api": tenths_of_us_per(spent("api"), n),
            "redis_by_command": by_command(before, after, n),
        })
    };
    let cpu_us_per_create = per_job(&before_singles, &before_batches, jobs);
    let cpu_us_per_batch_job = per_job(&before_batches, &after_batches, batch_jobs);
    let rss = stack.peak_rss();
    stack.stop();
    Ok(json!({
        "scenario": "creates",
        "jobs": jobs,
        "clients": options.clients,
        "redis_set_per_s": redis_set_per_s.round(),
        "create_per_s": single_per_s,
        "create_share_of_redis_set": (single_per_s / redis_set_per_s * 1000.0).round() / 1000.0,
        "batch_jobs": batch_jobs,
        "batch_create_per_s": batch_per_s.round(),
        "cpu_us_per_create": cpu_us_per_create,
        "cpu_us_per_batch_job": cpu_us_per_batch_job,
        "peak_rss_mib": rss,
    }))
}

/// `redis-benchmark -t set -c 50` against the Redis the stack uses, in a database of its own
/// (removed after): requests per second.
fn redis_set_rate() -> anyhow::Result<f64> {
    const DB: &str = "9";
    // redis-benchmark waits for ever on a Redis that is not there: bounded by `timeout`.
    let output = Command::new("timeout")
        .args(["120", "redis-benchmark", "-p", "6379", "--dbnum", DB])
        .args(["-t", "set", "-c", "50", "-n", "300000", "-q"])
        .output()
        .context("running redis-benchmark (Debian's redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `SET: 85034.02 requests per second, p50=0.303 msec` (after progress lines ending in \r).
    let rate = text
        .rsplit("SET: ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no SET rate in redis-benchmark's output: {text}"))?;
    let _ = Command::new("redis-cli")
        .args(["-n", DB, "del", "key:__rand_int__"])
        .output();
    Ok(rate)
}

/// Creates `jobs` jobs through `POST /v1/jobs:batch`, [`BATCH`] a request: jobs per second.
async fn schedule_batches(stack: &Stack, jobs: usize, due: &str) -> anyhow::Result<f64> {
    let job = dummy_job(due.to_string());
    let body = serde_json::to_vec(&json!({ "jobs": vec![job; BATCH] }))?;
    let requests = jobs.div_ceil(BATCH);
    let began = Instant::now();
    let answers = http_load::post_all(
        &stack.api,
        "/v1/jobs:batch",
        KEY,
        requests,
        BATCH_CLIENTS,
        |_| body.clone(),
    )
    .await?;
    let elapsed = began.elapsed().as_secs_f64();
    #[derive(serde::Deserialize)]
    struct Reply {
        created: usize,
    }
    let mut created = 0;
    for answer in answers {
        if answer.status != 200 {
            bail!("batch answered {}", answer.status);
        }
        created += serde_json::from_slice::<Reply>(&answer.body)?.created;
    }
    if created != requests * BATCH {
        bail!("{created} of {} batch jobs created", requests * BATCH);
    }
    Ok(created as f64 / elapsed)
}
