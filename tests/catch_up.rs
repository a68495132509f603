//! Catch-up, chosen: after ten minutes in which nothing fired (no provisioner running, the broker's
//! queues wiped), an every-minute job runs once (`latest`), its three newest missed minutes oldest
//! first (`all`, `max_catch_up: 3`), or nothing missed (`none`), then goes on schedule; each missed
//! minute at most once. Enabling a disabled job never replays the time it was disabled.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Timelike, Utc};
use reqwest::Method;
use serde_json::json;
use spot_shared::store::Store;
use spot_tests::*;

/// Creates an every-minute dummy job with these policies, then puts its timer ten minutes back: as if
/// it had waited there since, nothing handing it over.
async fn job_down_ten_minutes(
    app: &TestApp,
    store: &Store,
    policies: serde_json::Value,
    minute: DateTime<Utc>,
) -> String {
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"}, "policies": policies}),
        )
        .await;
    let mut job = store.get_job(&id).await.unwrap().unwrap();
    job.next_fire_at = Some(minute - chrono::Duration::minutes(10));
    store.save_job(&job).await.unwrap();
    id
}

async fn instants(store: &Store, id: &str) -> Vec<DateTime<Utc>> {
    let mut instants: Vec<_> = store
        .job_runs(id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|run| run.scheduled_at)
        .collect();
    instants.sort();
    instants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_each_job_catches_up_as_its_policy_says() {
    // Clear of a minute's turn, so that "the newest three" cannot move while the test runs.
    if Utc::now().second() >= 45 {
        tokio::time::sleep(Duration::from_secs(17)).await;
    }
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let latest = job_down_ten_minutes(&app, &store, json!({}), minute).await;
    let all = job_down_ten_minutes(
        &app,
        &store,
        json!({"catch_up": "all", "max_catch_up": 3}),
        minute,
    )
    .await;
    let none = job_down_ten_minutes(&app, &store, json!({"catch_up": "none"}), minute).await;
    // The broker lost everything meanwhile.
    env.wipe_queues();

    let provisioner = spawn_provisioner(&env, &app.address).await;
    let next_minute = minute + chrono::Duration::minutes(1);
    for id in [&latest, &all, &none] {
        eventually(
            Duration::from_secs(30),
            "the timer back on schedule",
            || async {
                let job = store.get_job(id).await.unwrap().unwrap();
                (job.next_fire_at == Some(next_minute)).then_some(())
            },
        )
        .await;
    }
    // Settled: the runs are there (a catch-up fire runs as it is recorded).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = |back: i64| minute - chrono::Duration::minutes(back);
    assert_eq!(instants(&store, &latest).await, [at(10)], "one run for all");
    assert_eq!(
        instants(&store, &all).await,
        [at(2), at(1), at(0)],
        "the newest three, each once"
    );
    assert!(
        instants(&store, &none).await.is_empty(),
        "nothing missed runs"
    );
    for id in [&latest, &all] {
        for run in store.job_runs(id, 100).await.unwrap() {
            assert_eq!(
                run.state,
                spot_shared::model::RunState::Succeeded,
                "{run:?}"
            );
        }
    }

    // Disabled, then enabled: the schedule resumes from now, whatever the policy.
    for id in [&all, &none] {
        for action in ["disable", "enable"] {
            let response = app
                .send(
                    Method::POST,
                    &format!("/v1/jobs/{id}/{action}"),
                    ACCOUNT_KEY,
                    None,
                )
                .await;
            assert_eq!(response.status(), 200);
        }
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(job.next_fire_at, Some(next_minute));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(instants(&store, &all).await.len(), 3);
    assert!(instants(&store, &none).await.is_empty());

    // Bad values are refused, naming the field; the window's other name is read as the grace.
    let refused = app
        .send(
            Method::POST,
            "/v1/jobs",
            ACCOUNT_KEY,
            Some(
                json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"},
                "policies": {"catch_up": "all", "max_catch_up": 0}}),
            ),
        )
        .await;
    assert_eq!(refused.status(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("policies.max_catch_up"));
    let windowed = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"},
                "policies": {"catch_up": "all", "catch_up_window_secs": 300}}),
        )
        .await;
    let job = store.get_job(&windowed).await.unwrap().unwrap();
    assert_eq!(job.policies.misfire_grace_secs, Some(300));
    provisioner.stop().await;
}
