//! The store on a Redis Cluster (`scripts/cluster`: three primaries with a replica each, node timeout
//! 2 s): the primary serving a test's slot is killed with `kill -9` twice, once while jobs are being
//! created and once while they fire; each time its replica is promoted. Every job the api
//! acknowledged must still exist and fire exactly once. The killed node is started again (it
//! rejoins as a replica) by `scripts/cluster redis-up`, whatever the outcome.
//!
//! One test in a binary of its own: a killed primary also serves other tests' slots.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use spot_tests::redis_cluster::{kill_node, primary_of, restore_cluster, SEEDS};
use spot_tests::*;

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore_cluster();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_under_a_burst_loses_no_acknowledged_job_and_fires_each_once() {
    const JOBS: usize = 300;
    let _restore = Restore;
    assert!(
        restore_cluster(),
        "the Redis Cluster is not running: scripts/cluster up"
    );
    let env = TestEnv::on_redis_cluster(&SEEDS);
    let mut settings = env.settings.clone();
    // The reconciler as shipped (the harness turns it off elsewhere).
    settings.provisioner.reconcile_interval_secs = 5;
    let store = env.store().await;
    let app = spawn_app_with(settings.clone()).await;
    let provisioner = spawn_provisioner_with(settings, &app.address).await;

    // 300 jobs due 25 s from now, spread over 3 s; created 8 at a time, each retried on a 503 as a
    // client would. The slot's primary is killed once 100 are acknowledged.
    let due = Utc::now() + chrono::Duration::seconds(25);
    let first_primary = primary_of(&env.name).expect("a primary serves the test's slot");
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let killed = std::sync::atomic::AtomicBool::new(false);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let jobs: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|i| {
            let body = json!({
                "schedule": (due + chrono::Duration::milliseconds(10 * i as i64)).to_rfc3339(),
                "runner": {"type": "dummy", "template": "hi"},
            })
            .to_string();
            let (app, acknowledged, killed, refused) = (&app, &acknowledged, &killed, &refused);
            async move {
                let started = Instant::now();
                loop {
                    if acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 100
                        && !killed.swap(true, std::sync::atomic::Ordering::SeqCst)
                    {
                        kill_node(first_primary);
                    }
                    let response = app.post_raw("/v1/jobs", ACCOUNT_KEY, &body).await;
                    let status = response.status().as_u16();
                    if status == 201 {
                        let reply: serde_json::Value = response.json().await.unwrap();
                        acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return reply["id"].as_str().unwrap().to_string();
                    }
                    assert_eq!(
                        status, 503,
                        "only a retryable refusal while Redis fails over"
                    );
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "a job never accepted"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let promoted = primary_of(&env.name).expect("a replica was promoted");
    assert_ne!(promoted, first_primary, "the slot moved to the replica");
    eprintln!(
        "{}: primary {first_primary} killed after 100 jobs; {} creations refused with 503 until \
         {promoted} took over",
        env.name,
        refused.load(std::sync::atomic::Ordering::SeqCst)
    );
    for job in &jobs {
        let response = app.get(&format!("/v1/jobs/{job}"), ACCOUNT_KEY).await;
        assert_eq!(
            response.status(),
            200,
            "acknowledged job {job} survived the failover"
        );
    }

    // The old primary back, as the new one's replica; then the new one killed as the fires land.
    assert!(restore_cluster(), "the killed node rejoined");
    let until_due = (due - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_due + Duration::from_millis(1500)).await;
    kill_node(promoted);
    eprintln!(
        "{}: primary {promoted} killed 1.5 s into the fires",
        env.name
    );

    assert_each_fires_once(&store, &jobs, Duration::from_secs(90)).await;
    let events = store.event_counts().await.unwrap_or_default();
    eprintln!(
        "{}: every job fired once; writes_unreplicated = {}",
        env.name,
        events.get("writes_unreplicated").copied().unwrap_or(0)
    );
    assert!(provisioner.is_running());
    provisioner.stop().await;
    app.service.stop().await;
}
