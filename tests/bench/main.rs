//! `spot-bench`: measures how fast the api takes jobs and how precisely the system fires them, on the
//! real stack. It starts the api, provisioner and reaper as separate processes (release binaries beside
//! it) in a Redis prefix and RabbitMQ vhost of their own, schedules no-op (dummy) jobs over HTTP with
//! many concurrent clients, reads the fire instants back from the run records, and prints one JSON line
//! per scenario. `scripts/bench` builds it and starts Redis and RabbitMQ first.
//!
//! Usage: spot-bench [burst-20k] [burst-100k] [cron-10k] [creates] [pending-1m] [bcrypt-flood] [lifecycle-200] [op-costs]
//!        [scale-out] [--jobs N] [--clients N] [--pump-level L] [--spread SECONDS] [--cluster] [--shards S]
//!        [--jitter SECONDS]
//!
//! `--jitter J`: `cron-10k`'s jobs get `policies.jitter_secs: J`; its figures then show how the
//! starts spread over each minute (the point of jitter) beside their lateness.
//! `--cluster`: against `scripts/cluster` (Redis Cluster, one replica waited for after each
//! acknowledged write; three RabbitMQ nodes with quorum queues) instead of the single servers.
//! `--shards S`: `redis.timer_shards` for the bursts, `cron-10k`, `pending-1m` (its memory summed
//! over the primaries), `op-costs` (its Redis figures summed over them, and given per primary) and
//! `scale-out` (1 unless given; 16 for `scale-out`); the others read one node's figures and refuse
//! it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Timelike, Utc};
use serde_json::json;

const KEY: &str = "bench-key";

struct Stack {
    name: String,
    /// What the stack's keys start with: its name, or `{name}` on a cluster.
    key_base: String,
    api: String,
    children: Vec<(&'static str, Child)>,
    /// The single Redis, or the cluster's primary that serves the stack's slot (every key of it
    /// with one shard; the account's keys with more).
    redis: redis::Client,
    /// `redis`'s port on the cluster; 0 for the single Redis.
    redis_port: u16,
    cluster: bool,
    shards: u16,
    /// The services' configuration file, removed when the stack stops.
    config: std::path::PathBuf,
}

/// The names the provisioner processes of a stack go by, in order.
const PROVISIONERS: [&str; 4] = [
    "provisioner",
    "provisioner-2",
    "provisioner-3",
    "provisioner-4",
];

/// `rabbitmqctl` on node 1 of the RabbitMQ cluster `scripts/cluster` runs (management is off there).
fn cluster_ctl(args: &[&str]) -> anyhow::Result<()> {
    if !spot_tests::rabbit_cluster::node_ctl(1, args) {
        bail!("rabbitmqctl {args:?} on the RabbitMQ cluster's node 1 failed");
    }
    Ok(())
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

mod arrays;
mod bcrypt_flood;
mod creates;
mod http_load;
mod lifecycle;
mod op_costs;
mod scale_out;

/// Settings the bench run varies.
#[derive(Debug, Clone, Default)]
struct Options {
    /// `auth.bcrypt_failures_per_minute`, when not the default.
    bcrypt_failures_per_minute: Option<u32>,
    clients: usize,
    jobs: Option<usize>,
    /// `rabbitmq.timer_pump_level`, when not the default.
    pump_level: Option<i8>,
    /// Seconds over which a burst's jobs fall due (10 unless given): shorter, to find the ceiling.
    spread_secs: Option<u64>,
    /// On `scripts/cluster`'s Redis Cluster (every acknowledged write waiting for a replica) and
    /// three-node RabbitMQ cluster, instead of the single Redis and RabbitMQ.
    cluster: bool,
    /// `redis.timer_shards`, when not 1.
    shards: Option<u16>,
    /// Provisioner processes (1 unless given, at most 4).
    provisioners: usize,
    /// `policies.jitter_secs` of `cron-10k`'s jobs, when given.
    jitter_secs: Option<u64>,
}

impl Stack {
    async fn start(bin_dir: &Path, options: &Options) -> anyhow::Result<Stack> {
        let name = format!("bench-{}", &spot_shared::ids::new_id()[..8].to_lowercase());
        if options.cluster {
            cluster_ctl(&["add_vhost", &name])?;
            cluster_ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        } else {
            management("PUT", &format!("/api/vhosts/{name}"), "{}")?;
            management(
                "PUT",
                &format!("/api/permissions/{name}/guest"),
                r#"{"configure":".*","write":".*","read":".*"}"#,
            )?;
        }
        let (stores, key_base, redis_url) = if options.cluster {
            let seeds = spot_tests::redis_cluster::SEEDS;
            let primary = spot_tests::redis_cluster::primary_of(&name)
                .context("the Redis Cluster is not running: scripts/cluster up")?;
            (
                format!(
                    "[redis]\ncluster = true\nurl = {:?}\nother_urls = {:?}\nwait_replicas = 1\n\
                     key_prefix = {name:?}\n[rabbitmq]\nurl = \"amqp://guest:guest@127.0.0.1:5681/{name}\"\n\
                     other_urls = [\"amqp://guest:guest@127.0.0.1:5682/{name}\", \
                     \"amqp://guest:guest@127.0.0.1:5683/{name}\"]\n",
                    seeds[0],
                    &seeds[1..]
                ),
                format!("{{{name}}}"),
                format!("redis://127.0.0.1:{primary}"),
            )
        } else {
            (
                format!(
                    "[redis]\nkey_prefix = {name:?}\n[rabbitmq]\n\
                     url = \"amqp://guest:guest@127.0.0.1:5672/{name}\"\n"
                ),
                name.clone(),
                "redis://127.0.0.1:6379".to_string(),
            )
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api = format!("http://127.0.0.1:{port}");
        let config = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
{stores}
{pump_level}
[api]
port = {port}
public_url = "{api}"
[auth]
{auth}
[[auth.accounts]]
name = "bench"
keys = ["{KEY}"]
# pending-1m holds a million jobs in one account: ten times the default quota.
[quotas]
max_jobs = 10000000
[log]
level = "warn"
"#,
                pump_level = options
                    .pump_level
                    .map(|l| format!("timer_pump_level = {l}"))
                    .unwrap_or_default(),
                stores = stores.replacen(
                    "[redis]\n",
                    &format!("[redis]\ntimer_shards = {}\n", options.shards.unwrap_or(1)),
                    1
                ),
                auth = options
                    .bcrypt_failures_per_minute
                    .map(|n| format!("bcrypt_failures_per_minute = {n}"))
                    .unwrap_or_default(),
            ),
        )?;
        let mut children = Vec::new();
        let provisioners = &PROVISIONERS[..options.provisioners.clamp(1, PROVISIONERS.len())];
        for name in ["api"].iter().chain(provisioners).chain(&["reaper"]) {
            let service = name.split('-').next().unwrap_or(name);
            let child = Command::new(bin_dir.join(format!("spot-{service}")))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting spot-{service}"))?;
            children.push((*name, child));
        }
        spot_tests::wait_until_healthy(&api, Duration::from_secs(60)).await?;
        Ok(Stack {
            name,
            key_base,
            api,
            children,
            redis_port: if options.cluster {
                redis_url
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse().ok())
                    .unwrap_or(0)
            } else {
                0
            },
            redis: redis::Client::open(redis_url)?,
            cluster: options.cluster,
            shards: options.shards.unwrap_or(1),
            config,
        })
    }

    /// A connection to the node serving the keys under `prefix` (a shard's, or the stack's own):
    /// on a cluster the primary of its hash tag's slot, else the single Redis.
    async fn node_serving(
        &self,
        prefix: &str,
    ) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        if !self.cluster {
            return Ok(self.redis.get_multiplexed_async_connection().await?);
        }
        let tag = prefix.trim_start_matches('{').trim_end_matches('}');
        let port =
            spot_tests::redis_cluster::primary_of(tag).context("no primary serves the slot")?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// A connection to each Redis that may hold the stack's keys, with its port: the single Redis
    /// (port 0), the primary of its slot with one shard, or every primary of the cluster with more.
    async fn data_nodes(&self) -> anyhow::Result<Vec<(u16, redis::aio::MultiplexedConnection)>> {
        let mut conns = Vec::new();
        if self.cluster && self.shards > 1 {
            for port in spot_tests::redis_cluster::primaries() {
                let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
                conns.push((port, client.get_multiplexed_async_connection().await?));
            }
        } else {
            conns.push((
                self.redis_port,
                self.redis.get_multiplexed_async_connection().await?,
            ));
        }
        Ok(conns)
    }

    /// `used_memory` of each Redis that may hold the stack's keys ([`Stack::data_nodes`]).
    async fn memory_of_data_nodes(&self) -> anyhow::Result<Vec<f64>> {
        let mut used = Vec::new();
        for (_, mut conn) in self.data_nodes().await? {
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            used.push(
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .context("INFO memory has no used_memory")?,
            );
        }
        Ok(used)
    }

    /// The stack's store, as the services see it.
    async fn store(&self) -> anyhow::Result<spot_shared::store::Store> {
        let seeds = spot_tests::redis_cluster::SEEDS;
        let (url, other_urls) = if self.cluster {
            (
                seeds[0],
                seeds[1..].iter().map(|s| s.to_string().into()).collect(),
            )
        } else {
            ("redis://127.0.0.1:6379", Vec::new())
        };
        Ok(
            spot_shared::store::Store::connect(&spot_shared::config::RedisSettings {
                url: url.to_string().into(),
                key_prefix: self.name.clone(),
                cluster: self.cluster,
                other_urls,
                wait_replicas: 0,
                wait_timeout_ms: 1000,
                timer_shards: self.shards,
            })
            .await?,
        )
    }

    /// From the provisioners' lateness histogram (when each fire's run was written, not when it was
    /// fired): the bucket bounds holding half and 99 % of the fires.
    async fn written_lateness(&self) -> anyhow::Result<serde_json::Value> {
        let histogram = self.store().await?.fire_lateness().await?;
        Ok(json!({
            "written_ms_p50_at_most": histogram.quantile_bound(0.5),
            "written_ms_p99_at_most": histogram.quantile_bound(0.99),
        }))
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
        let _ = std::fs::remove_file(&self.config);
        if self.cluster {
            let _ = cluster_ctl(&["delete_vhost", &self.name]);
        } else {
            let _ = management("DELETE", &format!("/api/vhosts/{}", self.name), "");
        }
        if self.cluster && self.shards > 1 {
            // The shards' keys are on every primary.
            let seeds: Vec<String> = spot_tests::redis_cluster::SEEDS
                .iter()
                .map(|s| s.to_string())
                .collect();
            spot_tests::delete_redis_keys(&self.name, Some(&seeds));
        } else if let Ok(mut conn) = self.redis.get_connection() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.key_base))
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

/// Creates `jobs` jobs over HTTP with `clients` concurrent clients; `body(i)` is the i-th job. Returns
/// the ids in order and the rate, in jobs per second.
async fn schedule_jobs(
    stack: &Stack,
    jobs: usize,
    clients: usize,
    body: impl Fn(usize) -> serde_json::Value,
) -> anyhow::Result<(Vec<String>, f64)> {
    let began = Instant::now();
    let answers = http_load::post_all(&stack.api, "/v1/jobs", KEY, jobs, clients, |i| {
        serde_json::to_vec(&body(i)).unwrap_or_default()
    })
    .await?;
    let rate = jobs as f64 / began.elapsed().as_secs_f64();
    #[derive(serde::Deserialize)]
    struct Created {
        id: String,
    }
    let ids: Vec<anyhow::Result<String>> = answers
        .into_iter()
        .map(|answer| {
            if answer.status != 201 {
                bail!("schedule answered {}", answer.status);
            }
            Ok(serde_json::from_slice::<Created>(&answer.body)?.id)
        })
        .collect();
    Ok((
        ids.into_iter().collect::<anyhow::Result<_>>()?,
        rate.round(),
    ))
}

/// Every run of each job: (scheduled instant, the instant its run was recorded). Read shard by
/// shard, each from the node that serves it.
async fn fires_of(
    stack: &Stack,
    ids: &[String],
) -> anyhow::Result<Vec<Vec<(DateTime<Utc>, DateTime<Utc>)>>> {
    let shards = spot_shared::store::Shards::new(&stack.name, stack.shards, stack.cluster);
    let mut by_shard: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for (index, id) in ids.iter().enumerate() {
        by_shard.entry(shards.of(id)).or_default().push(index);
    }
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let mut all = vec![Vec::new(); ids.len()];
    for (shard, indexes) in by_shard {
        let prefix = shards.prefix(shard);
        let mut conn = stack.node_serving(prefix).await?;
        for chunk in indexes.chunks(2000) {
            let mut pipe = redis::pipe();
            for &index in chunk {
                pipe.zrange(format!("{prefix}:job:{}:runs", ids[index]), 0, -1);
            }
            let runs: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            let mut pipe = redis::pipe();
            for run in runs.iter().flatten() {
                pipe.cmd("HMGET")
                    .arg(format!("{prefix}:run:{run}"))
                    .arg("scheduled_at")
                    .arg("t:pending");
            }
            let times: Vec<(Option<String>, Option<String>)> = if runs.iter().all(Vec::is_empty) {
                Vec::new()
            } else {
                pipe.query_async(&mut conn).await?
            };
            let mut times = times.iter();
            for (&index, job_runs) in chunk.iter().zip(&runs) {
                for _ in job_runs {
                    if let Some((scheduled, at)) = times.next() {
                        if let (Some(scheduled), Some(at)) = (parse(scheduled), parse(at)) {
                            all[index].push((scheduled, at));
                        }
                    }
                }
            }
        }
    }
    Ok(all)
}

/// Lateness percentiles and the fire rate of a set of fires.
fn fire_figures(fires: &[(DateTime<Utc>, DateTime<Utc>)]) -> serde_json::Value {
    let mut lateness: Vec<i64> = fires
        .iter()
        .map(|(due, at)| (*at - *due).num_milliseconds())
        .collect();
    lateness.sort_unstable();
    let first = fires.iter().map(|f| f.1).min();
    let last = fires.iter().map(|f| f.1).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(1) as f64 / 1000.0,
        _ => 0.0,
    };
    json!({
        "fired": fires.len(),
        "fires_per_s": if span > 0.0 { (fires.len() as f64 / span).round() } else { 0.0 },
        "lateness_ms_p50": percentile(&lateness, 50.0),
        "lateness_ms_p99": percentile(&lateness, 99.0),
        "lateness_ms_max": lateness.last().copied().unwrap_or(0),
    })
}

/// How a minute's fires are spread: the fires recorded in each second of the minute (averaged over
/// `minutes`), the busiest second's share of them, and how long after the minute's instant the runs
/// were recorded (with jitter, the delay plus the lateness).
fn spread_over_the_minute(
    fires: &[(DateTime<Utc>, DateTime<Utc>)],
    minutes: i64,
) -> serde_json::Value {
    let mut by_second = [0usize; 60];
    let mut after_instant: Vec<i64> = Vec::with_capacity(fires.len());
    for (due, at) in fires {
        let instant = due
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(*due);
        let after = (*at - instant).num_milliseconds();
        after_instant.push(after);
        by_second[(after / 1000).clamp(0, 59) as usize] += 1;
    }
    after_instant.sort_unstable();
    let busiest = by_second.iter().max().copied().unwrap_or(0);
    let per_minute = |n: usize| (n as f64 / minutes.max(1) as f64).round();
    json!({
        "fires_by_second_of_minute": by_second.iter().map(|n| per_minute(*n)).collect::<Vec<_>>(),
        "busiest_second_fires": per_minute(busiest),
        "busiest_second_share": ((busiest as f64 / fires.len().max(1) as f64) * 1000.0).round() / 1000.0,
        "after_instant_ms_p50": percentile(&after_instant, 50.0),
        "after_instant_ms_p99": percentile(&after_instant, 99.0),
    })
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        for (key, value) in from {
            into.insert(key.clone(), value.clone());
        }
    }
}

fn dummy_job(schedule: String) -> serde_json::Value {
    json!({"schedule": schedule, "runner": {"type": "dummy", "template": "x"}})
}

/// Schedules `jobs` one-shot dummy jobs due evenly over `spread`, starting `lead` ahead; waits for all
/// to fire; reports rates and lateness.
async fn burst(
    bin_dir: &Path,
    scenario: &str,
    jobs: usize,
    options: &Options,
    spread: Duration,
    lead: Duration,
) -> anyhow::Result<serde_json::Value> {
    let stack = Stack::start(bin_dir, options).await?;
    // Instants to the millisecond, as the api stores them.
    let start_ms = (Utc::now() + chrono::Duration::from_std(lead)?).timestamp_millis();
    let step_ms = spread.as_millis() as f64 / jobs.max(1) as f64;
    let due = |i: usize| {
        DateTime::from_timestamp_millis(start_ms + (step_ms * i as f64) as i64).unwrap_or_default()
    };
    let (ids, rate) = schedule_jobs(&stack, jobs, options.clients, |i| {
        dummy_job(due(i).to_rfc3339())
    })
    .await?;
    if Utc::now().timestamp_millis() > start_ms {
        eprintln!("{scenario}: scheduling took longer than the lead; lateness includes it");
    }
    // The CPU the fires take: from two seconds before the first is due (the pump's claims are long
    // done; the first batches are about to arrive) until the last is recorded.
    let window_opens = DateTime::from_timestamp_millis(start_ms - 2000).unwrap_or_default();
    tokio::time::sleep((window_opens - Utc::now()).to_std().unwrap_or_default()).await;
    let cpu_before = cpu_now(&stack).await?;
    // Wait on the lateness histogram's count (one Redis read a second, so that watching does not
    // load what it measures), then read every run once.
    let deadline = Instant::now() + lead + spread + Duration::from_secs(120);
    let store = stack.store().await?;
    while store.fire_lateness().await?.count < ids.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu_after = cpu_now(&stack).await?;
    let fires: Vec<_> = fires_of(&stack, &ids)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut result = json!({
        "scenario": scenario,
        "jobs": jobs,
        "clients": options.clients,
        "schedule_per_s": rate,
    });
    merge(&mut result, fire_figures(&fires));
    let spent =
        |name: &str| cpu_after.get(name).unwrap_or(&0.0) - cpu_before.get(name).unwrap_or(&0.0);
    let per_fire: BTreeMap<&String, f64> = cpu_after
        .keys()
        .filter(|name| *name != "redis_forks" && !name.starts_with(COMMAND_STAT))
        .map(|name| {
            (
                name,
                (spent(name) / fires.len().max(1) as f64 * 1e6).round(),
            )
        })
        .collect();
    let by_command = by_command(&cpu_before, &cpu_after, fires.len());
    merge(
        &mut result,
        json!({
            "cpu_us_per_fire": per_fire,
            "redis_us_per_fire_by_command": by_command,
            "redis_forks_while_firing": spent("redis_forks"),
        }),
    );
    merge(&mut result, stack.written_lateness().await?);
    merge(&mut result, json!(stack.peak_rss()));
    stack.stop();
    Ok(result)
}

/// `seconds` spent over `units` things, in microseconds each to a tenth.
pub(crate) fn tenths_of_us_per(seconds: f64, units: usize) -> f64 {
    (seconds / units.max(1) as f64 * 1e7).round() / 10.0
}

/// Redis's own count of the time each command took between two [`cpu_now`]s (a script's inner
/// calls counted both in the script and on their own), in microseconds per one of `units` to a
/// tenth, the costliest first, those under a tenth left out: `[["evalsha", 14.7], ...]`.
pub(crate) fn by_command(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    units: usize,
) -> Vec<serde_json::Value> {
    let mut commands: Vec<(&str, f64)> = after
        .iter()
        .filter_map(|(name, seconds)| {
            let command = name.strip_prefix(COMMAND_STAT)?;
            let spent = seconds - before.get(name).unwrap_or(&0.0);
            let us = tenths_of_us_per(spent, units);
            (us >= 0.1).then_some((command, us))
        })
        .collect();
    commands.sort_by(|a, b| b.1.total_cmp(&a.1));
    commands
        .into_iter()
        .map(|(command, us)| json!([command, us]))
        .collect()
}

/// Prefix of [`cpu_now`]'s entries for one Redis command's time (`cmd:evalsha`).
const COMMAND_STAT: &str = "cmd:";

/// CPU seconds spent so far by the Redis nodes that hold the stack's keys (summed, as `redis`) and
/// by each service; as `redis_forks`, how many times those nodes have forked (an append-only file
/// rewritten, a snapshot), whose child takes a core the fires would have had; and as `cmd:NAME`,
/// the seconds Redis counts for each command (`INFO commandstats`, summed over the nodes).
pub(crate) async fn cpu_now(stack: &Stack) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut cpu = BTreeMap::new();
    let (mut redis, mut forks) = (0.0, 0.0);
    let mut commands: BTreeMap<String, f64> = BTreeMap::new();
    for (_, mut conn) in stack.data_nodes().await? {
        cpu = op_costs::cpu_seconds(&mut conn, stack).await?;
        redis += cpu.get("redis").copied().unwrap_or(0.0);
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        // `cmdstat_get:calls=2,usec=15,usec_per_call=7.50,...`
        for line in stats.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let usec = fields
                .split(',')
                .find_map(|field| field.strip_prefix("usec="))
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0);
            *commands.entry(format!("{COMMAND_STAT}{name}")).or_default() += usec / 1e6;
        }
        let stats: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await?;
        forks += stats
            .lines()
            .find_map(|line| line.strip_prefix("total_forks:"))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    cpu.insert("redis".to_string(), redis);
    cpu.insert("redis_forks".to_string(), forks);
    cpu.extend(commands);
    Ok(cpu)
}

/// `jobs` dummy jobs firing every minute, watched for `minutes` whole minutes: each must fire exactly
/// once a minute.
async fn cron(
    bin_dir: &Path,
    jobs: usize,
    minutes: i64,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    let stack = Stack::start(bin_dir, options).await?;
    let (ids, rate) = schedule_jobs(&stack, jobs, options.clients, |_| {
        let mut job = dummy_job("* * * * *".into());
        if let Some(jitter) = options.jitter_secs {
            job["policies"] = json!({ "jitter_secs": jitter });
        }
        job
    })
    .await?;
    // Watch whole minutes that start after every job is in.
    let now = Utc::now();
    let first = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
        + chrono::Duration::minutes(1);
    let end = first + chrono::Duration::minutes(minutes);
    let wait = (end - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
    tokio::time::sleep(wait).await;
    let per_job = fires_of(&stack, &ids).await?;
    let mut in_window = Vec::new();
    let mut exact = 0;
    for fires in &per_job {
        let window: Vec<_> = fires
            .iter()
            .filter(|(due, _)| *due >= first && *due < end)
            .copied()
            .collect();
        if window.len() == minutes as usize {
            exact += 1;
        }
        in_window.extend(window);
    }
    let mut result = json!({
        "scenario": "cron-10k",
        "jobs": jobs,
        "jitter_secs": options.jitter_secs.unwrap_or(0),
        "minutes": minutes,
        "schedule_per_s": rate,
        "jobs_firing_exactly_once_a_minute": exact,
    });
    merge(&mut result, fire_figures(&in_window));
    merge(&mut result, spread_over_the_minute(&in_window, minutes));
    merge(&mut result, stack.written_lateness().await?);
    merge(&mut result, json!(stack.peak_rss()));
    stack.stop();
    Ok(result)
}

/// `jobs` one-shot jobs due in 30 days: the schedule rate, what holding them costs (each service's RSS,
/// Redis memory per job), how long the api takes to list one account's first page, and how fast the
/// parked timers are brought into `timers` once they come within the far horizon.
async fn pending(
    bin_dir: &Path,
    jobs: usize,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    let stack = Stack::start(bin_dir, options).await?;
    // As a deployment holds them: once its provisioner keeps the far horizon (before that, every
    // timer goes in `timers`).
    let settings = spot_shared::config::Settings::load(Some(&stack.config))?;
    let store = spot_shared::store::Store::connect(&settings.redis).await?;
    let waited = Instant::now();
    while !store.far_horizon_kept().await? {
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the provisioner kept no far horizon within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = stack.memory_of_data_nodes().await?;
    let due = (Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let (_, rate) =
        schedule_jobs(&stack, jobs, options.clients, |_| dummy_job(due.clone())).await?;
    let after = stack.memory_of_data_nodes().await?;
    let per_job = |grown: f64| (grown / jobs.max(1) as f64).round();
    // Per node as well: with shards on a cluster, how evenly the jobs spread over the primaries.
    let by_node: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(was, is)| per_job(is - was))
        .collect();
    let client = reqwest::Client::new();
    let began = Instant::now();
    let page = client
        .get(format!("{}/v1/jobs?limit=100", stack.api))
        .header("X-Auth-Token", KEY)
        .send()
        .await?;
    let status = page.status();
    let _ = page.bytes().await?;
    let list_ms = began.elapsed().as_secs_f64() * 1000.0;
    // What the provisioner does when they come within the far horizon: every parked timer brought
    // into `timers`, a few buckets a script.
    let horizon = Utc::now() + chrono::Duration::days(31);
    let began = Instant::now();
    let mut dropped = 0;
    for shard in store.shards().all() {
        dropped += store.promote_far_timers(shard, horizon).await?.dropped;
    }
    let promote_secs = began.elapsed().as_secs_f64();
    // The provisioner's own promotion may take part once the horizon is moved: counted from `timers`.
    let mut promoted: u64 = 0;
    for shard in store.shards().all() {
        let prefix = store.shards().prefix(shard);
        let mut conn = stack.node_serving(prefix).await?;
        promoted += redis::cmd("ZCARD")
            .arg(format!("{prefix}:timers"))
            .query_async::<u64>(&mut conn)
            .await?;
    }
    let mut result = json!({
        "scenario": "pending-1m",
        "promoted": promoted,
        "promote_dropped": dropped,
        "promoted_per_s": (promoted as f64 / promote_secs).round(),
        "jobs": jobs,
        "schedule_per_s": rate,
        "redis_bytes_per_job": by_node.iter().sum::<f64>(),
        "redis_bytes_per_job_by_node": by_node,
        "list_first_page_ms": (list_ms * 10.0).round() / 10.0,
        "list_status": status.as_u16(),
    });
    merge(&mut result, json!(stack.peak_rss()));
    stack.stop();
    Ok(result)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut scenarios = Vec::new();
    let mut options = Options {
        clients: 64,
        provisioners: 1,
        ..Options::default()
    };
    // The default's, unless asked for one or more (each scenario then runs once per level).
    let mut pump_levels: Vec<Option<i8>> = vec![None];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jobs" => options.jobs = Some(args.next().context("--jobs N")?.parse()?),
            "--clients" => options.clients = args.next().context("--clients N")?.parse()?,
            "--pump-level" => {
                let levels = args.next().context("--pump-level L[,L...]")?;
                pump_levels = levels
                    .split(',')
                    .map(|l| l.trim().parse::<i8>().map(Some))
                    .collect::<Result<_, _>>()?;
            }
            "--cluster" => options.cluster = true,
            "--shards" => options.shards = Some(args.next().context("--shards S")?.parse()?),
            "--jitter" => {
                options.jitter_secs = Some(args.next().context("--jitter SECONDS")?.parse()?)
            }
            "--spread" => {
                options.spread_secs = Some(args.next().context("--spread SECONDS")?.parse()?)
            }
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
    let spread = Duration::from_secs(options.spread_secs.unwrap_or(10));
    // Past the default pump's horizon (33 s), so that every timer takes the path it takes in use.
    let lead = Duration::from_secs(45);
    let runs: Vec<(String, Option<i8>)> = scenarios
        .iter()
        .flat_map(|s| pump_levels.iter().map(move |l| (s.clone(), *l)))
        .collect();
    for (scenario, pump_level) in runs {
        let options = Options {
            pump_level,
            ..options.clone()
        };
        let options = &options;
        let jobs = |default: usize| options.jobs.unwrap_or(default);
        let on_shards = [
            "burst-20k",
            "burst-100k",
            "cron-10k",
            "scale-out",
            "pending-1m",
            "op-costs",
        ];
        if options.shards.unwrap_or(1) > 1 && !on_shards.contains(&scenario.as_str()) {
            bail!("--shards is for {on_shards:?}: the others read one node's figures");
        }
        let result = match scenario.as_str() {
            "burst-20k" => {
                burst(
                    &bin_dir,
                    &scenario,
                    jobs(20_000),
                    options,
                    spread,
                    lead,
                )
                .await?
            }
            "burst-100k" => {
                burst(
                    &bin_dir,
                    &scenario,
                    jobs(100_000),
                    options,
                    spread,
                    lead,
                )
                .await?
            }
            "cron-10k" => cron(&bin_dir, jobs(10_000), 3, options).await?,
            "creates" => creates::run(&bin_dir, jobs(20_000), options).await?,
            "pending-1m" => pending(&bin_dir, jobs(1_000_000), options).await?,
            "bcrypt-flood" => bcrypt_flood::run(&bin_dir, options).await?,
            "lifecycle-200" => lifecycle::run(&bin_dir, jobs(200), options).await?,
            "op-costs" => op_costs::run(&bin_dir, jobs(10_000), options).await?,
            "scale-out" => scale_out::run(&bin_dir, jobs(10_000), options).await?,
            "array-10k" => arrays::run(jobs(10_000)).await?,
            other => bail!(
                "unknown scenario {other} (burst-20k, burst-100k, cron-10k, creates, pending-1m, bcrypt-flood, lifecycle-200, op-costs, scale-out)"
            ),
        };
        let mut result = result;
        let level = pump_level.map_or_else(|| "default".to_string(), |l| l.to_string());
        merge(
            &mut result,
            json!({ "pump_level": level, "cluster": options.cluster }),
        );
        println!("{result}");
    }
    Ok(())
}
