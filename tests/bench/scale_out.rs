//! `scale-out`: whether the work of each provisioner, and of each Redis primary, falls as more share
//! it. For 1, 2 and 3 provisioner processes in turn, a stack whose jobs are split over `--shards`
//! timer shards (16 unless given) fires `--jobs` one-shot jobs due over 10 s, 40 s ahead (past the
//! pump's horizon). Measured per run, from a 5 s idle window first and then the fires: each
//! provisioner's CPU (`/proc/PID/stat`) per fire and per idle second, and each Redis primary's
//! commands (`INFO commandstats`, after `CONFIG RESETSTAT`) and CPU per fire: on a cluster every
//! primary (the slot's with one shard), on a single Redis the one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::op_costs::{command_calls, cpu_seconds};
use crate::{dummy_job, schedule_jobs, Options, Stack, PROVISIONERS};

const IDLE: Duration = Duration::from_secs(5);

/// Per primary: total command calls and Redis CPU seconds; and each provisioner's CPU seconds.
struct Reading {
    calls: BTreeMap<u16, f64>,
    redis_cpu: BTreeMap<u16, f64>,
    provisioner_cpu: BTreeMap<String, f64>,
}

async fn read(
    stack: &Stack,
    conns: &mut [(u16, redis::aio::MultiplexedConnection)],
) -> anyhow::Result<Reading> {
    let mut reading = Reading {
        calls: BTreeMap::new(),
        redis_cpu: BTreeMap::new(),
        provisioner_cpu: BTreeMap::new(),
    };
    for (port, conn) in conns.iter_mut() {
        let calls = command_calls(conn).await?;
        let total = calls
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
            .map(|(_, n)| n)
            .sum();
        reading.calls.insert(*port, total);
        let cpu = cpu_seconds(conn, stack).await?;
        reading
            .redis_cpu
            .insert(*port, cpu.get("redis").copied().unwrap_or(0.0));
        reading.provisioner_cpu = cpu
            .into_iter()
            .filter(|(name, _)| PROVISIONERS.contains(&name.as_str()))
            .collect();
    }
    Ok(reading)
}

/// `(after - before) / units`, rounded to `scale`, keyed by the map's keys.
fn per<K: Ord + ToString>(
    before: &BTreeMap<K, f64>,
    after: &BTreeMap<K, f64>,
    units: f64,
    scale: f64,
) -> serde_json::Map<String, serde_json::Value> {
    after
        .iter()
        .map(|(key, value)| {
            let spent = value - before.get(key).copied().unwrap_or(0.0);
            (
                key.to_string(),
                json!((spent / units * scale).max(0.0).round() / 100.0),
            )
        })
        .collect()
}

pub async fn run(
    bin_dir: &Path,
    jobs: usize,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    let shards = options.shards.unwrap_or(16);
    let mut runs = Vec::new();
    for provisioners in 1..=3 {
        let options = Options {
            shards: Some(shards),
            provisioners,
            ..options.clone()
        };
        let stack = Stack::start(bin_dir, &options).await?;
        // A lease round a second: let the provisioners share the shards out first.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut conns = stack.data_nodes().await?;
        for (_, conn) in conns.iter_mut() {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(conn)
                .await?;
        }
        let idle_start = read(&stack, &mut conns).await?;
        tokio::time::sleep(IDLE).await;
        let idle_end = read(&stack, &mut conns).await?;

        let start_ms = (Utc::now() + chrono::Duration::seconds(40)).timestamp_millis();
        let step_ms = 10_000.0 / jobs.max(1) as f64;
        let (ids, _) = schedule_jobs(&stack, jobs, options.clients, |i| {
            let due = DateTime::from_timestamp_millis(start_ms + (step_ms * i as f64) as i64)
                .unwrap_or_default();
            dummy_job(due.to_rfc3339())
        })
        .await?;
        let created = read(&stack, &mut conns).await?;
        let store = stack.store().await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        while store.fire_lateness().await?.count < ids.len() as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let fired = read(&stack, &mut conns).await?;
        let lateness = store.fire_lateness().await?;
        let n = ids.len() as f64;
        let idle_secs = IDLE.as_secs_f64();
        runs.push(json!({
            "provisioners": provisioners,
            "fired": lateness.count,
            // CPU: µs per fire (×1e6, two decimals); commands per fire; idle per second.
            "provisioner_cpu_us_per_fire": per(&created.provisioner_cpu, &fired.provisioner_cpu, n, 1e8),
            "provisioner_cpu_ms_per_idle_s": per(&idle_start.provisioner_cpu, &idle_end.provisioner_cpu, idle_secs, 1e5),
            "redis_commands_per_fire_by_primary": per(&created.calls, &fired.calls, n, 100.0),
            "redis_cpu_us_per_fire_by_primary": per(&created.redis_cpu, &fired.redis_cpu, n, 1e8),
            "redis_idle_commands_per_s_by_primary": per(&idle_start.calls, &idle_end.calls, idle_secs, 100.0),
        }));
        stack.stop();
    }
    Ok(json!({
        "scenario": "scale-out",
        "jobs": jobs,
        "shards": shards,
        "runs": runs,
    }))
}
