//! The Redis Cluster `scripts/cluster` runs on this host (three primaries with a replica each, ports
//! 7101..7106): which node serves a prefix's slot, killing one, and giving the cluster back whole.

use std::process::Command;
use std::time::{Duration, Instant};

/// Seed nodes, as services are given them.
pub const SEEDS: [&str; 3] = [
    "redis://127.0.0.1:7101",
    "redis://127.0.0.1:7102",
    "redis://127.0.0.1:7103",
];
const PORTS: std::ops::RangeInclusive<u16> = 7101..=7106;

/// A plain connection to one node, if it answers.
pub fn node(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()
}

/// The port of the primary that serves the slot of `{prefix}` (every key of a store with that
/// prefix), as any live node sees it.
pub fn primary_of(prefix: &str) -> Option<u16> {
    let mut conn = PORTS.clone().find_map(node)?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("{{{prefix}}}"))
        .query(&mut conn)
        .ok()?;
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn).ok()?;
    // `id ip:port@bus flags master ping pong epoch state slot-ranges...`
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.get(8..)?.iter().any(|range| {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            matches!((low.parse::<u16>(), high.parse::<u16>()),
                (Ok(low), Ok(high)) if (low..=high).contains(&slot))
        });
        let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        serves.then_some(port)
    })
}

/// The ports of the primaries serving slots now, as any live node sees it.
pub fn primaries() -> Vec<u16> {
    let Some(mut conn) = PORTS.clone().find_map(node) else {
        return Vec::new();
    };
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut conn)
        .unwrap_or_default();
    let mut ports: Vec<u16> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = flags.contains("master") && !flags.contains("fail") && fields.len() > 8;
            let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            serving.then_some(port)
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// Runs `args` on every node that answers (what a cluster does not pass on, such as `ACL SETUSER`).
pub fn on_every_node(args: &[&str]) {
    for mut conn in PORTS.clone().filter_map(node) {
        let _: redis::RedisResult<redis::Value> =
            redis::cmd(args[0]).arg(&args[1..]).query(&mut conn);
    }
}

/// `kill -9` of the Redis on `port`; returns once it no longer answers.
pub fn kill_node(port: u16) {
    let mut conn = node(port).expect("the node answers");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .expect("INFO");
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id in INFO");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let deadline = Instant::now() + Duration::from_secs(5);
    while node(port).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the nodes that are down again (they rejoin as replicas) and waits for the cluster to be
/// whole, three replicas attached: `scripts/cluster redis-up`. Whether it is.
pub fn restore_cluster() -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster");
    Command::new(script)
        .arg("redis-up")
        .status()
        .is_ok_and(|s| s.success())
}
