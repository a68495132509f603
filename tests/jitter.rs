//! Jitter (`policies.jitter_secs`, or EventBridge's `flexible_time_window`): each fire starts within
//! the window after its instant, before the next, at the time `GET /v1/jobs/{id}/next` showed, once,
//! also across a provisioner restart.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::*;

fn instant(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// Every 3 s, each fire up to 2 s late on purpose.
fn jittered_job() -> Value {
    json!({
        "schedule": "*/3 * * * * *",
        "runner": {"type": "dummy", "template": "x"},
        "policies": {"jitter_secs": 2},
    })
}

async fn next_fires(app: &TestApp, id: &str, count: usize) -> Vec<DateTime<Utc>> {
    let answer: Value = app
        .get(&format!("/v1/jobs/{id}/next?count={count}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    answer["next"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(instant)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jittered_fires_start_when_previewed_within_the_window_once_across_a_restart() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let id = app.create_job(ACCOUNT_KEY, jittered_job()).await;
    let previewed = next_fires(&app, &id, 6).await;
    let mut delays = BTreeSet::new();
    for at in &previewed {
        // The instant is the whole multiple of 3 s before the fire: the delay is below 2 s.
        let base_ms = at.timestamp_millis() - at.timestamp_millis() % 3000;
        let delay = at.timestamp_millis() - base_ms;
        assert!((0..2000).contains(&delay), "{at}: delay {delay} ms");
        delays.insert(delay);
    }
    assert!(delays.len() > 1, "the delays differ: {delays:?}");

    let provisioner = spawn_provisioner(&env, &app.address).await;
    let runs_of = |wanted: usize| {
        let app = &app;
        let id = id.clone();
        async move {
            eventually(Duration::from_secs(40), "the previewed fires", || async {
                let runs = app.runs(&id).await;
                (runs.len() >= wanted).then_some(runs)
            })
            .await
        }
    };
    runs_of(3).await;
    // Stopped and replaced: the next provisioner computes the same delays.
    provisioner.stop().await;
    let _again = spawn_provisioner(&env, &app.address).await;
    let runs = runs_of(6).await;
    let mut fired: Vec<DateTime<Utc>> = runs.iter().map(|r| instant(&r["scheduled_at"])).collect();
    fired.sort();
    let unique: BTreeSet<_> = fired.iter().collect();
    assert_eq!(unique.len(), fired.len(), "a fire ran twice: {fired:?}");
    // What fired is what was previewed (the first may have been taken by the fire before the
    // preview, the restart may have made one late but never moved it).
    for at in fired.iter().take(6) {
        assert!(
            previewed.contains(at),
            "{at} was not previewed: {previewed:?}"
        );
    }
    for run in &runs {
        let scheduled = instant(&run["scheduled_at"]);
        let started = instant(&run["transitions"]["pending"]);
        assert!(started >= scheduled, "started early: {run}");
    }
}

#[tokio::test]
async fn eventbridges_flexible_window_reads_as_jitter_and_bad_windows_are_refused() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let mut body = json!({
        "schedule": "rate(1 hour)",
        "runner": {"type": "dummy", "template": "x"},
        "flexible_time_window": {"mode": "FLEXIBLE", "maximum_window_in_minutes": 15},
    });
    let created = app
        .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body.clone()))
        .await;
    assert_eq!(created.status(), 201);
    let job: Value = created.json().await.unwrap();
    assert_eq!(job["policies"]["jitter_secs"], 900, "{job}");
    let next = instant(&job["next_fire_at"]);
    // `rate` counts from the creation, to the millisecond.
    let created_ms = instant(&job["created_at"]).timestamp_millis();
    let delay = chrono::Duration::milliseconds(next.timestamp_millis() - created_ms)
        - chrono::Duration::hours(1);
    assert!(
        delay >= chrono::Duration::zero() && delay < chrono::Duration::minutes(15),
        "{job}"
    );

    let refused = [
        (
            json!({"mode": "FLEXIBLE"}),
            "flexible_time_window.maximum_window_in_minutes",
        ),
        (
            json!({"mode": "FLEXIBLE", "maximum_window_in_minutes": 1441}),
            "flexible_time_window.maximum_window_in_minutes",
        ),
        (
            json!({"mode": "OFF", "maximum_window_in_minutes": 5}),
            "flexible_time_window.maximum_window_in_minutes",
        ),
        (json!({"mode": "SOMETIMES"}), "flexible_time_window.mode"),
    ];
    for (window, field) in refused {
        body["flexible_time_window"] = window;
        let response = app
            .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body.clone()))
            .await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{error}");
    }
    // Both forms, saying different things; and a jitter over a day.
    body["flexible_time_window"] = json!({"mode": "FLEXIBLE", "maximum_window_in_minutes": 5});
    body["policies"] = json!({"jitter_secs": 60});
    let response = app
        .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body.clone()))
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"], "flexible_time_window", "{error}");
    body.as_object_mut().unwrap().remove("flexible_time_window");
    body["policies"] = json!({"jitter_secs": 86_401});
    let response = app
        .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body.clone()))
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"], "policies.jitter_secs", "{error}");
    // Nothing was created by the refused ones.
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");
}
