//! Chaining: `policies.on_success` / `on_failure` start jobs of the same account when a run ends so,
//! each told `SPOT_PARENT_RUN_ID`; once per ending however often it is reported, and still once
//! when the step that starts them is lost (the sweep does it); a chain that loops back is refused
//! at save with the loop named.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::model::RunState;
use spot_shared::store::{FireRecord, Moved};
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn container(app: &TestApp, cmd: &str, policies: Value) -> String {
    let image = busybox_image().await;
    app.create_job(
        ACCOUNT_KEY,
        json!({"schedule": "@yearly", "runner": {"type": "container", "image": image, "cmd": cmd},
            "policies": policies}),
    )
    .await
}

async fn ended_runs(app: &TestApp, id: &str) -> Vec<Value> {
    app.runs(id)
        .await
        .into_iter()
        .filter(|run| ended(run).is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ending_starts_its_chained_jobs_once_even_when_its_step_is_lost() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let on_success = container(&app, "sh -c 'echo parent=$SPOT_PARENT_RUN_ID'", json!({})).await;
    let on_failure = container(
        &app,
        "sh -c 'echo failed parent=$SPOT_PARENT_RUN_ID'",
        json!({}),
    )
    .await;
    let parent = container(
        &app,
        "sh -c 'exit ${CODE:-0}'",
        json!({"on_success": [on_success], "on_failure": [on_failure]}),
    )
    .await;

    // A success starts on_success, with the parent run in its environment.
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{parent}/run"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    let child = eventually(Duration::from_secs(60), "the chained run", || async {
        ended_runs(&app, &on_success).await.into_iter().next()
    })
    .await;
    let parent_run = app.runs(&parent).await.remove(0);
    assert_eq!(parent_run["state"], "succeeded");
    assert_eq!(
        app.run_log(&child).await.trim(),
        format!("parent={}", parent_run["id"].as_str().unwrap())
    );

    // Reported again, the ending starts nothing more.
    let job = store.get_job(&parent).await.unwrap().unwrap();
    let run = store
        .get_run(parent_run["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let again = spot_shared::policy::end_run(&store, Some(&job), &run, RunState::Succeeded, &[])
        .await
        .unwrap();
    assert_eq!(again, Moved::AlreadyThere);

    // A failure whose step to start its chained jobs is lost (as a crash would lose it): noted
    // with the ending, started by the sweep, once.
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let failed = match store
        .record_fire(&job, job.generation, now, 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("{other:?}"),
    };
    let chain_at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    store
        .end_run(
            &failed,
            RunState::Failed,
            &[("exit_code", "3".into())],
            None,
            Some(chain_at),
        )
        .await
        .unwrap();
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    assert_eq!(
        reaper.sweep_once().await.unwrap().chained,
        0,
        "within its grace"
    );
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().chained, 1);
    assert_eq!(reaper.sweep_once().await.unwrap().chained, 0, "once");
    // Started twice anyway (the lost step was only slow): the same fire, one run.
    let failed_run = store.get_run(&failed).await.unwrap().unwrap();
    spot_shared::chain::start(&store, &job, &failed_run, chain_at)
        .await
        .unwrap();
    let chained = eventually(
        Duration::from_secs(60),
        "the failure's chained run",
        || async { ended_runs(&app, &on_failure).await.into_iter().next() },
    )
    .await;
    assert_eq!(
        app.run_log(&chained).await.trim(),
        format!("failed parent={failed}")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.runs(&on_failure).await.len(), 1);
    assert_eq!(app.runs(&on_success).await.len(), 1);
    provisioner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_loops_back_or_names_a_stranger_is_refused() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let dummy = |policies: Value| json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t"}, "policies": policies});
    let b = app.create_job(ACCOUNT_KEY, dummy(json!({}))).await;
    let a = app
        .create_job(ACCOUNT_KEY, dummy(json!({"on_success": [b]})))
        .await;
    let stranger = app.create_job(OTHER_ACCOUNT_KEY, dummy(json!({}))).await;
    for (id, policies, field, message) in [
        (
            &b,
            json!({"on_failure": [a]}),
            "policies.on_failure[0]",
            format!("the chain loops back: {b} → {a} → {b}"),
        ),
        (
            &b,
            json!({"on_success": [b]}),
            "policies.on_success[0]",
            format!("the chain loops back: {b} → {b}"),
        ),
        (
            &b,
            json!({"on_success": [stranger]}),
            "policies.on_success[0]",
            format!("no job {stranger} of this account"),
        ),
        (
            &b,
            json!({"on_success": ["no-such-job"]}),
            "policies.on_success[0]",
            "no job no-such-job".to_string(),
        ),
    ] {
        let response = app
            .send(
                Method::PUT,
                &format!("/v1/jobs/{id}"),
                ACCOUNT_KEY,
                Some(dummy(policies)),
            )
            .await;
        assert_eq!(response.status(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains(field) && body.contains(&message), "{body}");
    }
}
