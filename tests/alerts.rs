//! Lateness and duration alerts: a run whose code has not started `alert_late_secs` after its instant
//! is marked late, one still running `alert_running_secs` after it started is marked long running;
//! each once however many sweeps see it, counted in `/metrics`, shown on the run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use spot_shared::store::FireRecord;
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn run_view(app: &TestApp, run_id: &str) -> Value {
    app.get(&format!("/v1/runs/{run_id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_and_long_running_runs_are_marked_once_and_counted() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let image = busybox_image().await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();

    // Late: a fire recorded with nothing to launch it (no provisioner yet).
    let late_job = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "container", "image": image, "cmd": "true"},
                "policies": {"alert_late_secs": 1}}),
        )
        .await;
    let job = store.get_job(&late_job).await.unwrap().unwrap();
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let late_run = match store
        .record_fire(&job, job.generation, now, 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(reaper.sweep_once().await.unwrap().alerts, 0, "not late yet");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().alerts, 1);
    assert_eq!(reaper.sweep_once().await.unwrap().alerts, 0, "marked once");
    let shown = run_view(&app, &late_run).await;
    assert!(shown["late_alert_at"].is_string(), "{shown}");

    // Long running: a container of 30 s with a bound of 1 s.
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let long_job = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "container", "image": image, "cmd": "sleep 30"},
                "policies": {"alert_running_secs": 1}}),
        )
        .await;
    app.run_now(&long_job).await;
    let run = eventually(Duration::from_secs(60), "the container running", || async {
        app.runs(&long_job)
            .await
            .into_iter()
            .find(|run| run["state"] == "running")
    })
    .await;
    let run_id = run["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "a sweep to mark it", || async {
        reaper.sweep_once().await.unwrap();
        run_view(&app, &run_id).await["long_running_alert_at"]
            .is_string()
            .then_some(())
    })
    .await;
    assert_eq!(reaper.sweep_once().await.unwrap().alerts, 0, "marked once");
    // A run without the policy is never marked.
    assert!(run_view(&app, &late_run).await["long_running_alert_at"].is_null());

    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    for line in [
        "spot_scheduler_events_total{event=\"alert_late\"} 1",
        "spot_scheduler_events_total{event=\"alert_long_running\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    // Bad bounds are refused, naming the field.
    let refused = app
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            ACCOUNT_KEY,
            Some(
                json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t"},
                "policies": {"alert_running_secs": 0}}),
            ),
        )
        .await;
    assert_eq!(refused.status(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("policies.alert_running_secs"));
    provisioner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_waiting_in_its_jobs_line_is_late_too_and_a_backfills_never() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t"},
                "policies": {"alert_late_secs": 1, "concurrency": "queue"}}),
        )
        .await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    // Two fires and no provisioner: the first pending, the second waiting behind it.
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let mut runs = Vec::new();
    for instant in [now, now + chrono::Duration::milliseconds(1)] {
        match store
            .record_fire(&job, job.generation, instant, 1)
            .await
            .unwrap()
        {
            FireRecord::New(run_id) | FireRecord::Queued(run_id) => runs.push(run_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(run_view(&app, &runs[1]).await["state"], "queued");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        reaper.sweep_once().await.unwrap().alerts,
        2,
        "the pending run and the queued one"
    );
    for run_id in &runs {
        let shown = run_view(&app, run_id).await;
        assert!(shown["late_alert_at"].is_string(), "{shown}");
    }
    assert_eq!(reaper.sweep_once().await.unwrap().alerts, 0, "marked once");

    // A backfill's runs wait for instants long past by design: no alert.
    let backfilled = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"},
                "policies": {"alert_late_secs": 1}}),
        )
        .await;
    let to = Utc::now() - chrono::Duration::minutes(1);
    let from = to - chrono::Duration::minutes(3);
    let response = app
        .send(
            reqwest::Method::POST,
            &format!("/v1/jobs/{backfilled}/backfill"),
            ACCOUNT_KEY,
            Some(json!({"from": from.to_rfc3339(), "to": to.to_rfc3339(), "concurrency": 1})),
        )
        .await;
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    // The first sweep starts the backfill's first run; the next ones see it under way.
    for _ in 0..3 {
        let report = reaper.sweep_once().await.unwrap();
        assert_eq!(report.alerts, 0, "{report:?}");
    }
    let started = app
        .runs(&backfilled)
        .await
        .into_iter()
        .filter(|run| run["state"] == "pending")
        .count();
    assert_eq!(started, 1, "a backfill run under way, and not alerted");
}
