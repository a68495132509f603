//! Overrides at trigger time: `POST /v1/jobs/{id}/run {"image", "cmd", "env"}` runs that fire (and its
//! retries) with them, on the real path (Redis, RabbitMQ, Docker); the run shows them; bad ones are a
//! 400 naming the field and fire nothing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn run_now(app: &TestApp, id: &str, body: Option<Value>) -> (u16, Value) {
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/run"),
            ACCOUNT_KEY,
            body,
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_now_with_overrides_runs_them_in_every_attempt_and_the_job_keeps_its_own() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    // Fails the first attempt of an overridden run, so the retry must carry the overrides too.
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "@yearly",
                "runner": {"type": "container", "image": image, "env": ["MODE=job", "REGION=eu"],
                    "cmd": "sh -c 'echo mode=$MODE region=$REGION day=$DAY'"},
                "policies": {"retries": {"max_attempts": 2, "backoff_secs": 1, "backoff_max_secs": 1}},
            }),
        )
        .await;
    let overrides = json!({
        "env": ["MODE=backfill", "DAY=2026-12-01"],
        "cmd": "sh -c 'echo mode=$MODE region=$REGION day=$DAY attempt=$SPOT_ATTEMPT; [ \"$SPOT_ATTEMPT\" = 2 ]'",
    });
    let (status, answer) = run_now(&app, &id, Some(overrides.clone())).await;
    assert_eq!(status, 202, "{answer}");

    let runs = eventually(Duration::from_secs(90), "two attempts ended", || async {
        let runs = app.runs(&id).await;
        let ended = runs.len() == 2
            && runs.iter().all(|run| {
                run["state"] != "pending"
                    && run["state"] != "provisioning"
                    && run["state"] != "booting"
                    && run["state"] != "running"
            });
        ended.then_some(runs)
    })
    .await;
    for run in &runs {
        assert_legal_history(run);
        let attempt = run["attempt"].as_u64().unwrap();
        let expected = if attempt == 1 { "failed" } else { "succeeded" };
        assert_eq!(run["state"], expected, "{run}");
        // The run's detail shows what it ran with.
        let detail: Value = app
            .get(
                &format!("/v1/runs/{}", run["id"].as_str().unwrap()),
                ACCOUNT_KEY,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(detail["overrides"], overrides, "{detail}");
        // And the container saw them: its own variables replaced, the job's others kept.
        let log = app.run_log(run).await;
        assert_eq!(
            log.trim(),
            format!("mode=backfill region=eu day=2026-12-01 attempt={attempt}"),
            "{log}"
        );
    }

    // A plain run-now runs the job as it is.
    let (status, _) = run_now(&app, &id, None).await;
    assert_eq!(status, 202);
    let plain = eventually(Duration::from_secs(60), "the plain run", || async {
        let runs = app.runs(&id).await;
        runs.into_iter()
            .find(|run| run["state"] == "succeeded" && run["overrides"].is_null())
    })
    .await;
    assert_eq!(app.run_log(&plain).await.trim(), "mode=job region=eu day=");

    // Bad overrides: a 400 naming the field, and no fire.
    let before = app.runs(&id).await.len();
    for (body, field) in [
        (json!({"image": "not an image"}), "image"),
        (json!({"cmd": "echo 'unterminated"}), "cmd"),
        (json!({"env": ["no-equals"]}), "env[0]"),
        (json!({"entrypoint": "sh"}), "entrypoint"),
    ] {
        let (status, answer) = run_now(&app, &id, Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains(field), "{field}: {answer}");
    }
    let dummy = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t"}}),
        )
        .await;
    let (status, answer) = run_now(&app, &dummy, Some(json!({"env": ["A=1"]}))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.to_string().contains("container jobs only"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.runs(&id).await.len(), before);
    assert!(app.runs(&dummy).await.is_empty());
    provisioner.stop().await;
    reaper.stop().await;
}
