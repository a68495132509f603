//! Backfill: `POST /v1/jobs/{id}/backfill {"from", "to", "concurrency"}` makes a run for each instant
//! of the schedule in the range, marked with the backfill, `concurrency` at a time; the broker wiped
//! in the middle loses none and runs none twice; it is cancelled as a whole; bad ranges are a 400
//! naming the field.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app.send(Method::POST, path, ACCOUNT_KEY, Some(body)).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn backfill_runs(app: &TestApp, id: &str, backfill: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/jobs/{id}/runs?limit=1000"), ACCOUNT_KEY)
        .await;
    let runs: Value = response.json().await.unwrap();
    runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|run| run["backfill"] == backfill)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_runs_each_instant_once_two_at_a_time_across_a_wiped_broker() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "* * * * *",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo ran $SPOT_SCHEDULED_AT; sleep 1'"},
            }),
        )
        .await;
    let minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let (from, to) = (
        minute - chrono::Duration::minutes(5) - chrono::Duration::seconds(30),
        minute - chrono::Duration::minutes(1),
    );
    let expected: BTreeSet<DateTime<Utc>> = (1..=5)
        .map(|m| minute - chrono::Duration::minutes(m))
        .collect();
    let (status, backfill) = post(
        &app,
        &format!("/v1/jobs/{id}/backfill"),
        json!({"from": from, "to": to, "concurrency": 2}),
    )
    .await;
    assert_eq!(status, 202, "{backfill}");
    assert_eq!(backfill["total"], 5, "{backfill}");
    let backfill_id = backfill["id"].as_str().unwrap().to_string();
    // The broker loses everything in flight, launches included.
    env.wipe_queues();

    eventually(Duration::from_secs(120), "the backfill done", || async {
        let listed: Value = app
            .get(&format!("/v1/jobs/{id}/backfills"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .unwrap();
        (listed["backfills"][0]["state"] == "done").then_some(())
    })
    .await;
    let runs = backfill_runs(&app, &id, &backfill_id).await;
    let instants: BTreeSet<DateTime<Utc>> = runs
        .iter()
        .map(|run| serde_json::from_value(run["scheduled_at"].clone()).unwrap())
        .collect();
    assert_eq!(runs.len(), 5, "one run per instant: {runs:?}");
    assert_eq!(instants, expected);
    for run in &runs {
        assert_legal_history(run);
        assert_eq!(run["state"], "succeeded", "{run}");
        let log = app.run_log(run).await;
        assert!(log.starts_with("ran "), "the user's code ran: {log}");
    }
    // Never more than two under way at once.
    for run in &runs {
        let start = entered(run, "pending").unwrap();
        let together = runs
            .iter()
            .filter(|other| {
                entered(other, "pending").unwrap() <= start && ended(other).unwrap() > start
            })
            .count();
        assert!(together <= 2, "{together} under way at {start}");
    }
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_is_cancelled_as_a_whole_and_bad_ranges_name_their_field() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'sleep 30'"},
            }),
        )
        .await;
    let path = format!("/v1/jobs/{id}/backfill");
    let now = Utc::now();
    let years = |n: i64| now - chrono::Duration::days(366 * n);
    for (body, field) in [
        (
            json!({"from": years(3), "to": now + chrono::Duration::hours(1)}),
            "to",
        ),
        (json!({"from": now, "to": years(1)}), "to"),
        (
            json!({"from": years(3), "to": now, "concurrency": 0}),
            "concurrency",
        ),
        (json!({"from": years(3)}), "to"),
    ] {
        let (status, answer) = post(&app, &path, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains(field), "{field}: {answer}");
    }
    // More than 10,000 instants: every second of three hours.
    let dense = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * * *", "enabled": true, "runner": {"type": "dummy", "template": "t"}}),
        )
        .await;
    let (status, answer) = post(
        &app,
        &format!("/v1/jobs/{dense}/backfill"),
        json!({"from": now - chrono::Duration::hours(3), "to": now}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("more than 10000"), "{answer}");

    // Twenty years of a yearly job, one at a time; cancelled while the first runs.
    let (status, backfill) = post(&app, &path, json!({"from": years(20), "to": now})).await;
    assert_eq!(status, 202, "{backfill}");
    let backfill_id = backfill["id"].as_str().unwrap().to_string();
    let total = backfill["total"].as_u64().unwrap();
    assert!(total >= 19, "{backfill}");
    eventually(
        Duration::from_secs(60),
        "the first run under way",
        || async {
            let runs = backfill_runs(&app, &id, &backfill_id).await;
            runs.iter()
                .any(|run| run["state"] == "running")
                .then_some(())
        },
    )
    .await;
    let cancel = format!("/v1/jobs/{id}/backfills/{backfill_id}/cancel");
    let (status, cancelled) = post(&app, &cancel, json!({})).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, _) = post(&app, &cancel, json!({})).await;
    assert_eq!(status, 409);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = backfill_runs(&app, &id, &backfill_id).await;
    assert_eq!(runs.len() as u64, total);
    assert!(
        runs.iter().all(|run| run["state"] == "cancelled"),
        "{runs:?}"
    );
    assert_eq!(
        runs.iter()
            .filter(|run| entered(run, "running").is_some())
            .count(),
        1,
        "nothing started after the cancel"
    );
    provisioner.stop().await;
    reaper.stop().await;
}
