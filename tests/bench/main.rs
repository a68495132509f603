//! `spot-bench`: measures how fast the api takes jobs and how precisely the system fires them, on the
//! real stack. It starts the api, provisioner and reaper as separate processes (release binaries beside
//! it) in a Redis prefix and RabbitMQ vhost of their own, schedules no-op (dummy) jobs over HTTP with
//! many concurrent clients, reads the fire instants back from the run records, and prints one JSON line
//! per scenario. `scripts/bench` builds it and starts Redis and RabbitMQ first.
//!
//! Usage: spot-bench [burst-20k] [burst-100k] [--jobs N] [--clients N]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;

const KEY: &str = "bench-key";

struct Stack {
    name: String,
    api: String,
    children: Vec<(&'static str, Child)>,
    redis: redis::Client,
}

fn management(method: &str, path: &str, body: &str) -> anyhow::Result<()> {
    let status = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-u",
            "guest:guest",
            "-X",
            method,
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", body, &format!("http://127.0.0.1:15672{path}")])
        .status()?;
    if !status.success() && method != "DELETE" {
        bail!("{method} {path} failed");
    }
    Ok(())
}

impl Stack {
    async fn start(bin_dir: &Path) -> anyhow::Result<Stack> {
        let name = format!("bench-{}", &spot_shared::ids::new_id()[..8].to_lowercase());
        management("PUT", &format!("/api/vhosts/{name}"), "{}")?;
        management(
            "PUT",
            &format!("/api/permissions/{name}/guest"),
            r#"{"configure":".*","write":".*","read":".*"}"#,
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api = format!("http://127.0.0.1:{port}");
        let config = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[redis]
key_prefix = "{name}"
[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/{name}"
[api]
port = {port}
public_url = "{api}"
[[auth.accounts]]
name = "bench"
keys = ["{KEY}"]
[provisioner]
prefetch = 1024
[log]
level = "warn"
"#
            ),
        )?;
        let mut children = Vec::new();
        for service in ["api", "provisioner", "reaper"] {
            let child = Command::new(bin_dir.join(format!("spot-{service}")))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting spot-{service}"))?;
            children.push((service, child));
        }
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .get(format!("{api}/healthcheck"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                bail!("the api did not come up");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Stack {
            name,
            api,
            children,
            redis: redis::Client::open("redis://127.0.0.1:6379")?,
        })
    }

    /// Peak resident memory of each service, in MiB.
    fn peak_rss(&self) -> HashMap<String, f64> {
        self.children
            .iter()
            .filter_map(|(name, child)| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
                let kib: f64 = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((
                    format!("rss_peak_mib_{name}"),
                    (kib / 1024.0 * 10.0).round() / 10.0,
                ))
            })
            .collect()
    }

    fn stop(mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        let _ = management("DELETE", &format!("/api/vhosts/{}", self.name), "");
        if let Ok(mut conn) = self.redis.get_connection() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.name))
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Schedules `jobs` one-shot dummy jobs due evenly over `spread`, starting `lead` ahead; waits for all
/// to fire; reports rates and lateness.
async fn burst(
    bin_dir: &Path,
    scenario: &str,
    jobs: usize,
    clients: usize,
    spread: Duration,
    lead: Duration,
) -> anyhow::Result<serde_json::Value> {
    let stack = Stack::start(bin_dir).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let start_at = Utc::now() + chrono::Duration::from_std(lead)?;
    let step_ns = spread.as_nanos() as i64 / jobs.max(1) as i64;
    let api = Arc::new(stack.api.clone());
    let began = Instant::now();
    let ids: Vec<anyhow::Result<(String, DateTime<Utc>)>> = futures::stream::iter(0..jobs)
        .map(|i| {
            let client = client.clone();
            let api = api.clone();
            async move {
                let due = start_at + chrono::Duration::nanoseconds(step_ns * i as i64);
                let body = json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "x"}});
                let response = client.post(format!("{api}/v1/jobs")).header("X-Auth-Token", KEY).json(&body).send().await?;
                if response.status() != 201 {
                    bail!("schedule answered {}", response.status());
                }
                let job: serde_json::Value = response.json().await?;
                Ok((job["id"].as_str().unwrap_or_default().to_string(), due))
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let schedule_secs = began.elapsed().as_secs_f64();
    let ids: Vec<(String, DateTime<Utc>)> = ids.into_iter().collect::<anyhow::Result<_>>()?;
    if Utc::now() > start_at {
        eprintln!("{scenario}: scheduling took longer than the lead; lateness includes it");
    }

    // Wait for every fire, then read the fire instants back.
    let mut conn = stack.redis.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + lead + spread + Duration::from_secs(120);
    let mut fired: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    loop {
        fired.clear();
        for chunk in ids.chunks(2000) {
            let mut pipe = redis::pipe();
            for (id, _) in chunk {
                pipe.zrange(format!("{}:job:{id}:runs", stack.name), 0, 0);
            }
            let runs: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            let mut pipe = redis::pipe();
            let mut scheduled = Vec::new();
            for ((_, due), run) in chunk.iter().zip(&runs) {
                if let Some(run) = run.first() {
                    pipe.hget(format!("{}:run:{run}", stack.name), "t:pending");
                    scheduled.push(*due);
                }
            }
            if scheduled.is_empty() {
                continue;
            }
            let times: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            for (due, at) in scheduled.into_iter().zip(times) {
                if let Some(at) = at.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()) {
                    fired.push((due, at.with_timezone(&Utc)));
                }
            }
        }
        if fired.len() == ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Lateness against the instant as stored (to the millisecond).
    let mut lateness: Vec<i64> = fired
        .iter()
        .map(|(due, at)| {
            (*at - DateTime::from_timestamp_millis(due.timestamp_millis()).unwrap_or(*due))
                .num_milliseconds()
        })
        .collect();
    lateness.sort_unstable();
    let first = fired.iter().map(|f| f.1).min();
    let last = fired.iter().map(|f| f.1).max();
    let fire_span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(1) as f64 / 1000.0,
        _ => 0.0,
    };
    let mut result = json!({
        "scenario": scenario,
        "jobs": jobs,
        "clients": clients,
        "schedule_per_s": (jobs as f64 / schedule_secs).round(),
        "fired": fired.len(),
        "fires_per_s": if fire_span > 0.0 { (fired.len() as f64 / fire_span).round() } else { 0.0 },
        "lateness_ms_p50": percentile(&lateness, 50.0),
        "lateness_ms_p99": percentile(&lateness, 99.0),
        "lateness_ms_max": lateness.last().copied().unwrap_or(0),
    });
    for (key, value) in stack.peak_rss() {
        result[key] = json!(value);
    }
    stack.stop();
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut scenarios = Vec::new();
    let mut jobs_override = None;
    let mut clients = 64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jobs" => jobs_override = Some(args.next().context("--jobs N")?.parse()?),
            "--clients" => clients = args.next().context("--clients N")?.parse()?,
            name => scenarios.push(name.to_string()),
        }
    }
    if scenarios.is_empty() {
        scenarios = vec!["burst-20k".into(), "burst-100k".into()];
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .to_path_buf();
    for scenario in scenarios {
        let result = match scenario.as_str() {
            "burst-20k" => {
                burst(
                    &bin_dir,
                    &scenario,
                    jobs_override.unwrap_or(20_000),
                    clients,
                    Duration::from_secs(10),
                    Duration::from_secs(30),
                )
                .await?
            }
            "burst-100k" => {
                burst(
                    &bin_dir,
                    &scenario,
                    jobs_override.unwrap_or(100_000),
                    clients,
                    Duration::from_secs(10),
                    Duration::from_secs(30),
                )
                .await?
            }
            other => bail!("unknown scenario {other} (burst-20k, burst-100k)"),
        };
        println!("{result}");
    }
    Ok(())
}
