//! The three-node RabbitMQ cluster `scripts/cluster` runs on this host (nodes `spot-rabbit-1..3`,
//! AMQP on ports 5681..5683, no management API): each node driven through `rabbitmqctl -n`, and a
//! vhost of a test's own on it.

use std::process::{Command, Stdio};

/// The cluster's nodes, by number.
pub const NODES: [u16; 3] = [1, 2, 3];

fn host() -> String {
    Command::new("hostname")
        .arg("-s")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `rabbitmqctl` on one node; its standard output if it succeeded.
pub fn node_output(node: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .arg("-n")
        .arg(format!("spot-rabbit-{node}@{}", host()))
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `rabbitmqctl` on one node; whether it succeeded.
pub fn node_ctl(node: u16, args: &[&str]) -> bool {
    node_output(node, args).is_some()
}

/// `rabbitmqctl` on the first node that runs it: cluster-wide commands (vhosts, queues) work on any.
fn any_node(args: &[&str]) -> Option<String> {
    NODES.iter().find_map(|&node| node_output(node, args))
}

/// Whether the cluster answers (node 1 up and started).
pub fn is_running() -> bool {
    node_ctl(1, &["await_startup", "--timeout", "10"])
}

/// The AMQP URL of `vhost` on one node.
pub fn url(node: u16, vhost: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", 5680 + node)
}

/// Makes `vhost` on the cluster with every permission for `guest`.
pub fn add_vhost(vhost: &str) {
    assert!(
        any_node(&["add_vhost", vhost]).is_some(),
        "the RabbitMQ cluster is not running: scripts/cluster up"
    );
    assert!(any_node(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]).is_some());
}

pub fn delete_vhost(vhost: &str) {
    any_node(&["delete_vhost", vhost]);
}

/// The names of `vhost`'s queues.
pub fn queues(vhost: &str) -> Vec<String> {
    any_node(&["list_queues", "-p", vhost, "--no-table-headers", "name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

/// Deletes one of `vhost`'s queues, with what it holds.
pub fn delete_queue(vhost: &str, queue: &str) -> bool {
    any_node(&["delete_queue", "-p", vhost, queue]).is_some()
}
