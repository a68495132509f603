//! Finite schedules: `policies.max_runs` ends a schedule after that many scheduled fires (each
//! counted once however often it is delivered), and `policies.on_last_run` disables or deletes the
//! job once the last of its runs has ended; a deleted job's runs stay readable by id.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::messages::FireMessage;
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn job_view(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Every fire delivered twice, by hand, with no provisioner running: three runs, three counts, and the
/// fourth instant finds the schedule over. The last run's end disables the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runs_counts_each_fire_once_however_often_it_is_delivered() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "* * * * * *",
                "runner": {"type": "dummy", "template": "beat"},
                "policies": {"max_runs": 3, "on_last_run": "disable"},
            }),
        )
        .await;
    assert_eq!(job_view(&app, &id).await["remaining_runs"], 3);
    let next: Value = app
        .get(&format!("/v1/jobs/{id}/next?count=10"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["next"].as_array().unwrap().len(), 3, "{next}");

    let provisioner = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    let mut last_instant = None;
    for fired in 1..=3u64 {
        let job = store.get_job(&id).await.unwrap().unwrap();
        let at = job.next_fire_at.expect("a fire left");
        let fire = FireMessage::scheduled(&id, job.generation, at);
        provisioner.handle_fire(&fire).await.unwrap();
        // Delivered again (a redelivery, a second provisioner): recorded once, counted once.
        provisioner.handle_fire(&fire).await.unwrap();
        assert_eq!(store.scheduled_fire_count(&id).await.unwrap(), fired);
        last_instant = Some((job.generation, at));
    }
    assert_eq!(app.runs(&id).await.len(), 3);
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.next_fire_at, None, "the schedule is over");
    assert!(
        !job.enabled,
        "on_last_run disable applied after the third run"
    );
    let shown = job_view(&app, &id).await;
    assert_eq!(shown["remaining_runs"], 0, "{shown}");
    assert_eq!(shown["enabled"], false, "{shown}");

    // The instant after the last, delivered anyway under the old generation: nothing runs.
    let (generation, at) = last_instant.unwrap();
    let late = FireMessage::scheduled(&id, generation, at + chrono::Duration::seconds(1));
    provisioner.handle_fire(&late).await.unwrap();
    assert_eq!(app.runs(&id).await.len(), 3);

    // Enabled again, it stays over until max_runs is raised; raised, it goes on for the difference.
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/enable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(job_view(&app, &id).await["next_fire_at"].is_null());
    let mut spec = job_view(&app, &id).await;
    spec["policies"]["max_runs"] = json!(4);
    let body = json!({
        "schedule": spec["schedule"], "runner": spec["runner"], "policies": spec["policies"],
    });
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{id}"),
            ACCOUNT_KEY,
            Some(body),
        )
        .await;
    assert_eq!(response.status(), 200);
    let shown = job_view(&app, &id).await;
    assert_eq!(shown["remaining_runs"], 1, "{shown}");
    assert!(shown["next_fire_at"].is_string(), "{shown}");

    // EventBridge Scheduler's form: ActionAfterCompletion DELETE.
    let aws = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"},
                   "action_after_completion": "DELETE", "policies": {"max_runs": 2}}),
        )
        .await;
    assert_eq!(
        job_view(&app, &aws).await["policies"]["on_last_run"],
        "delete"
    );

    // Bad values are refused, naming the field.
    for (extra, field) in [
        (json!({"policies": {"max_runs": 0}}), "policies.max_runs"),
        (
            json!({"policies": {"on_last_run": "explode"}}),
            "on_last_run",
        ),
        (
            json!({"action_after_completion": "ARCHIVE"}),
            "action_after_completion",
        ),
        (
            json!({"action_after_completion": "DELETE", "policies": {"on_last_run": "disable"}}),
            "action_after_completion",
        ),
    ] {
        let mut body =
            json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "t"}});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        let response = app
            .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body))
            .await;
        assert_eq!(response.status(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains(field), "{body}");
    }
}

/// Containers on the real path, with the provisioner stopped and replaced after the first run: the
/// job runs its three fires to their end, exactly, then deletes itself; its runs stay readable by id
/// (for a week: their keys expire) and nothing fires after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_deletes_itself_after_its_last_run_and_its_runs_stay_readable() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let reaper = spawn_reaper(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "*/2 * * * * *",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo ran $SPOT_SCHEDULED_AT'"},
                "policies": {"max_runs": 3, "on_last_run": "delete"},
            }),
        )
        .await;
    eventually(Duration::from_secs(30), "a first run", || async {
        (store.scheduled_fire_count(&id).await.unwrap() >= 1).then_some(())
    })
    .await;
    provisioner.stop().await;
    let provisioner = spawn_provisioner(&env, &app.address).await;

    eventually(
        Duration::from_secs(90),
        "the job to delete itself",
        || async {
            let response = app.get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY).await;
            (response.status() == 404).then_some(())
        },
    )
    .await;
    let runs = store.job_runs(&id, 100).await.unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let mut instants: Vec<_> = runs.iter().map(|run| run.scheduled_at).collect();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), 3, "one run per instant");
    for run in &runs {
        let response = app.get(&format!("/v1/runs/{}", run.id), ACCOUNT_KEY).await;
        assert_eq!(response.status(), 200, "run {} readable by id", run.id);
        let shown: Value = response.json().await.unwrap();
        assert_eq!(shown["state"], "succeeded", "{shown}");
        // The user's code ran to its own end.
        let log = app.run_log(&shown).await;
        assert!(log.contains("ran "), "{log}");
    }
    let (mut conn, keys) = env.raw_keys(&format!("run:{}*", runs[0].id)).await;
    assert!(!keys.is_empty());
    for key in keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 7 * 24 * 3600, "{key} expires ({ttl})");
    }
    // Nothing fires after: no run appears, no fire is counted (the count went with the job).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(store.job_runs(&id, 100).await.unwrap().len(), 3);
    assert_eq!(store.scheduled_fire_count(&id).await.unwrap(), 0);
    provisioner.stop().await;
    reaper.stop().await;
}
