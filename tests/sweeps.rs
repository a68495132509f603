//! The reaper's sweep ends every stuck run, not only runs with an instance: a run left `pending` by a
//! lost fire message or a crashed provisioner, and an HTTP action whose provisioner stopped
//! heartbeating, end `failed` (lost) and are retried when their policy allows; work still under way
//! is left alone.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use spot_shared::model::RunState;
use spot_shared::store::{FireRecord, Store};
use spot_tests::*;

/// A job whose fire was recorded as a pending run and then lost (no message carries it any more).
async fn lost_fire(store: &Store, app: &TestApp, body: Value) -> (String, String) {
    let job_id = app.create_job(ACCOUNT_KEY, body).await;
    let run_id = record_fire(store, &job_id).await;
    (job_id, run_id)
}

/// Records a fire of the job now, as a provisioner does first with a fire message.
async fn record_fire(store: &Store, job_id: &str) -> String {
    let job = store.get_job(job_id).await.unwrap().unwrap();
    match store
        .record_fire(&job, job.generation, Utc::now(), 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("a new run: {other:?}"),
    }
}

/// An HRM task (the http runner) holding `action_url`; returns its id, which is its job's.
async fn http_task(app: &TestApp, action_url: &str) -> String {
    let body = json!({"action_url": action_url, "timeout": 600}).to_string();
    let response = app.post_raw("/tasks", ACCOUNT_KEY, &body).await;
    assert_eq!(response.status(), 200);
    response
        .text()
        .await
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string()
}

fn container(retries: u32) -> Value {
    json!({
        "schedule": "0 0 1 1 *",
        "runner": {"type": "container", "image": image::BUSYBOX_IMAGE, "cmd": "true"},
        "policies": {"retries": {"max_attempts": retries, "backoff_secs": 1, "backoff_max_secs": 1}},
    })
}

async fn reaper(env: &TestEnv, pending_secs: u64, heartbeat_secs: u64) -> spot_reaper::Reaper {
    let mut settings = env.settings.clone();
    settings.reaper.pending_timeout_secs = pending_secs;
    settings.reaper.heartbeat_timeout_secs = heartbeat_secs;
    spot_reaper::Reaper::build(settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_pending_is_swept_as_lost_and_retried() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (job_id, run_id) = lost_fire(&store, &app, container(2)).await;
    let reaper = reaper(&env, 1, 120).await;

    // Young: left alone.
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
    assert_eq!(
        store.get_run(&run_id).await.unwrap().unwrap().state,
        RunState::Pending
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 1);
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").starts_with("lost"),
        "{run:?}"
    );
    // Its retry was armed in the same step, in Redis.
    let waiting = store.delayed_fires(10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].fire.job_id, job_id);
    assert_eq!(waiting[0].fire.attempt, 2);
    // Swept once: the next sweep finds nothing.
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_whose_launch_is_under_way_is_left_alone() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (_, run_id) = lost_fire(&store, &app, container(1)).await;
    let _lease = store
        .try_lease(&format!("launch:{run_id}"), Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the lease is free");
    let reaper = reaper(&env, 0, 120).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
    assert_eq!(
        store.get_run(&run_id).await.unwrap().unwrap().state,
        RunState::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_action_whose_provisioner_died_is_swept_as_lost() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    // No provisioner runs: the task's fire is recorded here, then its holder "dies".
    let task = http_task(&app, "http://127.0.0.1:9/work").await;
    let run_id = record_fire(&store, &task).await;
    // Started by a provisioner that then died: running, no instance, heartbeats stop.
    store
        .advance_run(&run_id, RunState::Running, &[])
        .await
        .unwrap();
    store
        .set_run_fields(&run_id, &[("heartbeat_at", Utc::now().to_rfc3339())])
        .await
        .unwrap();
    let reaper = reaper(&env, 300, 1).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0, "it just beat");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 1);
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("heartbeat"),
        "{run:?}"
    );
}

/// An HTTP action held by a live provisioner heartbeats, so a sweep with a short heartbeat timeout
/// leaves it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_action_held_by_a_live_provisioner_heartbeats() {
    let env = TestEnv::new();
    let store = env.store().await;
    // An action that answers only after a while: the provisioner holds it meanwhile.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(socket);
            });
        }
    });
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let job_id = http_task(&app, &format!("http://127.0.0.1:{port}/work")).await;
    let run_id = eventually(Duration::from_secs(10), "the action to start", || async {
        let runs = app.runs(&job_id).await;
        let run = runs.first()?;
        (run["state"] == "running").then(|| run["id"].as_str().unwrap().to_string())
    })
    .await;
    eventually(Duration::from_secs(5), "a heartbeat", || async {
        store.get_run(&run_id).await.ok()??.heartbeat_at.map(|_| ())
    })
    .await;
    let reaper = reaper(&env, 300, 30).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
    assert_eq!(
        store.get_run(&run_id).await.unwrap().unwrap().state,
        RunState::Running
    );
}
