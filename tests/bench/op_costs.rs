//! `op-costs`: what each operation costs the engines, the figures SCALING.md projects from. Redis:
//! commands per job created and per fire, from `INFO commandstats` of the nodes that hold the
//! stack's keys (the one, or with `--shards` on a cluster every primary, summed and given per
//! node; commands run inside Lua scripts are counted, each by its name, beside the `evalsha` that
//! ran them), less what the idle system spends meanwhile (pump, reconciler, leases), measured
//! first. RabbitMQ: messages published and delivered per fire, from the vhost's message
//! stats (the management API; not on the cluster, whose nodes run without it). CPU: Redis's own
//! (`INFO cpu`) and each service's (`/proc/PID/stat`), per job created and per fire, idle
//! spending taken off: what one core of each does per second follows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{dummy_job, schedule_jobs, Options, Stack};

/// How long the idle system is watched first.
const IDLE: Duration = Duration::from_secs(10);

/// Calls per command since the last `CONFIG RESETSTAT`.
pub(crate) async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    // `cmdstat_zadd:calls=12,usec=...`
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect())
}

/// CPU seconds spent so far, user and system: Redis's (from `INFO cpu`) and each service's.
pub(crate) async fn cpu_seconds(
    conn: &mut redis::aio::MultiplexedConnection,
    stack: &Stack,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut cpu = BTreeMap::from([(
        "redis".to_string(),
        field("used_cpu_user:") + field("used_cpu_sys:"),
    )]);
    // /proc counts in USER_HZ, 100 on every Linux architecture (it is ABI).
    let ticks = 100.0;
    for (name, child) in &stack.children {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", child.id())) else {
            continue;
        };
        // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) {
            cpu.insert(name.to_string(), (user + system) / ticks);
        }
    }
    Ok(cpu)
}

/// Microseconds of CPU per unit, by process, idle spending taken off.
fn cpu_per_unit(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    idle_per_s: &BTreeMap<String, f64>,
    secs: f64,
    units: f64,
) -> serde_json::Map<String, serde_json::Value> {
    after
        .iter()
        .map(|(name, spent)| {
            let spent = spent
                - before.get(name).copied().unwrap_or(0.0)
                - idle_per_s.get(name).copied().unwrap_or(0.0) * secs;
            (name.clone(), json!((spent / units * 1e6).max(0.0).round()))
        })
        .collect()
}

/// What the Redis nodes holding the stack's keys ([`Stack::data_nodes`]) have done so far: command
/// calls by name summed over them, and in all by node; CPU seconds, theirs summed as `redis`,
/// beside each service's.
struct Totals {
    calls: BTreeMap<String, f64>,
    calls_by_node: BTreeMap<String, f64>,
    cpu: BTreeMap<String, f64>,
}

async fn totals(
    nodes: &mut [(u16, redis::aio::MultiplexedConnection)],
    stack: &Stack,
) -> anyhow::Result<Totals> {
    let mut totals = Totals {
        calls: BTreeMap::new(),
        calls_by_node: BTreeMap::new(),
        cpu: BTreeMap::new(),
    };
    let mut redis_cpu = 0.0;
    for (port, conn) in nodes.iter_mut() {
        let calls = command_calls(conn).await?;
        let mut node_total = 0.0;
        for (name, n) in calls {
            if !matches!(name.as_str(), "info" | "config|resetstat") {
                node_total += n;
            }
            *totals.calls.entry(name).or_default() += n;
        }
        totals.calls_by_node.insert(port.to_string(), node_total);
        totals.cpu = cpu_seconds(conn, stack).await?;
        redis_cpu += totals.cpu.get("redis").copied().unwrap_or(0.0);
    }
    totals.cpu.insert("redis".into(), redis_cpu);
    Ok(totals)
}

/// `after - before - idle × secs`, per unit, by command (the largest first), and the total.
fn per_unit(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    idle_per_s: &BTreeMap<String, f64>,
    secs: f64,
    units: f64,
) -> (f64, Vec<(String, f64)>) {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(name, calls)| {
            let spent = calls
                - before.get(name).copied().unwrap_or(0.0)
                - idle_per_s.get(name).copied().unwrap_or(0.0) * secs;
            (name.clone(), (spent / units * 100.0).round() / 100.0)
        })
        .filter(|(name, per)| *per > 0.0 && !matches!(name.as_str(), "info" | "config|resetstat"))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = (rows.iter().map(|r| r.1).sum::<f64>() * 100.0).round() / 100.0;
    (total, rows)
}

/// The vhost's published and delivered message counts (management API), if it answers.
fn amqp_counts(vhost: &str) -> Option<(f64, f64)> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-u", "guest:guest"])
        .arg(format!("http://127.0.0.1:15672/api/vhosts/{vhost}"))
        .output()
        .ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let stats = &stats["message_stats"];
    Some((
        stats["publish"].as_f64().unwrap_or(0.0),
        stats["deliver_get"].as_f64().unwrap_or(0.0),
    ))
}

pub async fn run(
    bin_dir: &Path,
    jobs: usize,
    options: &Options,
) -> anyhow::Result<serde_json::Value> {
    let stack = Stack::start(bin_dir, options).await?;
    let mut nodes = stack.data_nodes().await?;
    for (_, conn) in nodes.iter_mut() {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(conn)
            .await?;
    }
    let idle_start = totals(&mut nodes, &stack).await?;
    tokio::time::sleep(IDLE).await;
    let idle_end = totals(&mut nodes, &stack).await?;
    let rate = |start: &BTreeMap<String, f64>, end: &BTreeMap<String, f64>| {
        end.iter()
            .map(|(name, spent)| {
                let before = start.get(name).copied().unwrap_or(0.0);
                (name.clone(), (spent - before) / IDLE.as_secs_f64())
            })
            .collect::<BTreeMap<String, f64>>()
    };
    let idle_cpu_per_s = rate(&idle_start.cpu, &idle_end.cpu);
    let idle_per_s = rate(&idle_start.calls, &idle_end.calls);
    let idle_by_node_per_s = rate(&idle_start.calls_by_node, &idle_end.calls_by_node);
    let idle_total: f64 = idle_per_s
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat"))
        .map(|(_, per_s)| per_s)
        .sum();

    // One-shot jobs due 40 s ahead (past the pump's horizon, so each takes the usual path), over 10 s.
    let start_ms = (Utc::now() + chrono::Duration::seconds(40)).timestamp_millis();
    let step_ms = 10_000.0 / jobs.max(1) as f64;
    let amqp_before = amqp_counts(&stack.name);
    let created_at = Instant::now();
    let (ids, _) = schedule_jobs(&stack, jobs, options.clients, |i| {
        let due = DateTime::from_timestamp_millis(start_ms + (step_ms * i as f64) as i64)
            .unwrap_or_default();
        dummy_job(due.to_rfc3339())
    })
    .await?;
    let create_secs = created_at.elapsed().as_secs_f64();
    let after_create = totals(&mut nodes, &stack).await?;

    let fired_at = Instant::now();
    let store = stack.store().await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while store.fire_lateness().await?.count < ids.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fire_secs = fired_at.elapsed().as_secs_f64();
    let after_fire = totals(&mut nodes, &stack).await?;
    // The management API's figures lag by its collection interval (5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let amqp_after = amqp_counts(&stack.name);

    let n = ids.len() as f64;
    let cpu_create = cpu_per_unit(
        &idle_end.cpu,
        &after_create.cpu,
        &idle_cpu_per_s,
        create_secs,
        n,
    );
    let cpu_fire = cpu_per_unit(
        &after_create.cpu,
        &after_fire.cpu,
        &idle_cpu_per_s,
        fire_secs,
        n,
    );
    let (create_total, create_rows) = per_unit(
        &idle_end.calls,
        &after_create.calls,
        &idle_per_s,
        create_secs,
        n,
    );
    let (fire_total, fire_rows) = per_unit(
        &after_create.calls,
        &after_fire.calls,
        &idle_per_s,
        fire_secs,
        n,
    );
    let by_node = |before: &Totals, after: &Totals, secs: f64| {
        let (_, rows) = per_unit(
            &before.calls_by_node,
            &after.calls_by_node,
            &idle_by_node_per_s,
            secs,
            n,
        );
        rows.into_iter()
            .map(|(node, per)| (node, json!(per)))
            .collect::<serde_json::Map<String, serde_json::Value>>()
    };
    let top = |rows: Vec<(String, f64)>| -> serde_json::Map<String, serde_json::Value> {
        rows.into_iter()
            .take(8)
            .map(|(k, v)| (k, json!(v)))
            .collect()
    };
    let amqp = match (amqp_before, amqp_after) {
        (Some((p0, d0)), Some((p1, d1))) => json!({
            "amqp_published_per_fire": ((p1 - p0) / n * 1000.0).round() / 1000.0,
            "amqp_delivered_per_fire": ((d1 - d0) / n * 1000.0).round() / 1000.0,
        }),
        _ => json!({}),
    };
    let mut result = json!({
        "scenario": "op-costs",
        "jobs": jobs,
        "shards": stack.shards,
        "redis_nodes": nodes.len(),
        "redis_idle_commands_per_s": (idle_total * 10.0).round() / 10.0,
        "redis_commands_per_create": create_total,
        "redis_commands_per_create_by_node": by_node(&idle_end, &after_create, create_secs),
        "redis_per_create": top(create_rows),
        "redis_commands_per_fire": fire_total,
        "redis_commands_per_fire_by_node": by_node(&after_create, &after_fire, fire_secs),
        "redis_per_fire": top(fire_rows),
        "cpu_us_per_create": cpu_create,
        "cpu_us_per_fire": cpu_fire,
    });
    crate::merge(&mut result, amqp);
    stack.stop();
    Ok(result)
}
