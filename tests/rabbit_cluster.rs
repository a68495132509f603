//! A three-node RabbitMQ cluster (`scripts/cluster`, which `scripts/test` starts): the services point
//! at node 1 with nodes 2 and 3 as `rabbitmq.other_urls`; node 1 is stopped while a burst of timers
//! waits in its quorum queues, and every job still fires exactly once. The test has a vhost of its
//! own on the cluster (its keys on the Redis Cluster) and gives node 1 back when it is done.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use spot_tests::rabbit_cluster::node_ctl;
use spot_tests::*;

/// Gives node 1 back, whatever the test's outcome (the vhost goes with the test's env).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        node_ctl(1, &["start_app"]);
        node_ctl(1, &["await_startup"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_under_a_burst_loses_no_fire() {
    const JOBS: usize = 300;
    assert!(
        rabbit_cluster::is_running(),
        "the RabbitMQ cluster is not running: scripts/cluster up"
    );
    let env = TestEnv::on_clusters();
    let _cleanup = Cleanup;

    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let store = env.store().await;
    let due = (Utc::now() + chrono::Duration::seconds(20)).to_rfc3339();
    let jobs: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|_| {
            app.create_job(
                ACCOUNT_KEY,
                json!({"schedule": due, "runner": {"type": "dummy", "template": "hi"}}),
            )
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eventually(
        Duration::from_secs(15),
        "the timers taken by the pump",
        || async { (store.unarmed_count().await.ok()? == 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The node every service is connected to goes away while the burst waits in the queues.
    let stop = tokio::task::spawn_blocking(|| node_ctl(1, &["stop_app"]));
    assert!(stop.await.unwrap(), "node 1 stopped");

    assert_each_fires_once(&store, &jobs, Duration::from_secs(60)).await;
    let (status, _) = {
        let response = app.get("/healthcheck", "").await;
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 200, "the api is on another node");
    assert!(provisioner.is_running());
    provisioner.stop().await;
    app.service.stop().await;
}
