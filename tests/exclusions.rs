//! Exclusions (`policies.exclude`): the instants a day or a pattern matches, in the job's zone, are
//! skipped by the fires themselves and shown as skipped by `GET /v1/jobs/{id}/next`; a bad exclusion
//! is a 400 naming it.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::*;

fn instants(value: &Value) -> Vec<DateTime<Utc>> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value}"))
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect()
}

/// Every second, with the even seconds excluded: only odd seconds fire, once each, and the preview
/// lists the even ones as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_instants_never_fire_and_show_as_skipped() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * * *", "runner": {"type": "dummy", "template": "x"},
                "policies": {"exclude": ["*/2 * * * * *"]}}),
        )
        .await;
    let next: Value = app
        .get(&format!("/v1/jobs/{id}/next?count=5"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    let fires = instants(&next["next"]);
    let skipped = instants(&next["skipped"]);
    assert_eq!(fires.len(), 5);
    assert!(fires.iter().all(|at| at.second() % 2 == 1), "{next}");
    assert!(skipped.len() >= 4, "{next}");
    assert!(skipped.iter().all(|at| at.second() % 2 == 0), "{next}");

    let runs = eventually(Duration::from_secs(20), "six runs", || async {
        let runs = app.runs(&id).await;
        (runs.len() >= 6).then_some(runs)
    })
    .await;
    let mut fired: Vec<DateTime<Utc>> = runs
        .iter()
        .map(|run| serde_json::from_value(run["scheduled_at"].clone()).unwrap())
        .collect();
    fired.sort();
    assert!(fired.iter().all(|at| at.second() % 2 == 1), "{fired:?}");
    for pair in fired.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(2), "{fired:?}");
    }
}

#[tokio::test]
async fn a_day_excluded_in_the_jobs_zone_moves_the_next_fire_and_bad_ones_are_refused() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    // Daily at 09:00 in Tokyo, with tomorrow (Tokyo's date) excluded: the next fire is the day after.
    let tokyo = spot_shared::schedule::parse_time_zone("Asia/Tokyo", "zone").unwrap();
    let now = Utc::now().with_timezone(&tokyo);
    let first_local = if now.hour() < 9 {
        now.date_naive()
    } else {
        now.date_naive().succ_opt().unwrap()
    };
    let excluded = first_local.format("%Y-%m-%d").to_string();
    let body = json!({"schedule": "0 9 * * *", "timezone": "Asia/Tokyo",
        "runner": {"type": "dummy", "template": "x"}, "policies": {"exclude": [excluded]}});
    let created = app
        .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body))
        .await;
    assert_eq!(created.status(), 201);
    let job: Value = created.json().await.unwrap();
    let next: DateTime<Utc> = serde_json::from_value(job["next_fire_at"].clone()).unwrap();
    let next_local = next.with_timezone(&tokyo);
    assert_eq!(
        next_local.date_naive(),
        first_local.succ_opt().unwrap(),
        "{job}"
    );
    assert_eq!(next_local.hour(), 9);

    for (exclude, field) in [
        (
            json!(["2026-12-25", "every other tuesday"]),
            "policies.exclude[1]",
        ),
        (json!(["rate(5 minutes)"]), "policies.exclude[0]"),
        (json!(vec!["2026-12-25"; 101]), "policies.exclude"),
    ] {
        let response = app
            .send(
                Method::POST,
                "/v1/jobs",
                ACCOUNT_KEY,
                Some(
                    json!({"schedule": "@daily", "runner": {"type": "dummy", "template": "x"},
                    "policies": {"exclude": exclude}}),
                ),
            )
            .await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{error}");
    }
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");
}
