//! Minion's instanceRunner done right, on moto's EC2: start, stop or reboot an existing instance by the
//! EC2 API itself, only on instances tagged as the account's own.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::*;

async fn state(ec2: &spot_shared::instance_power::Ec2, id: &str) -> String {
    ec2.describe(id).await.unwrap().unwrap().state
}

fn minion_job(instance_id: &str, action: &str) -> Value {
    json!({"job": {
        "description": "Start my server",
        "details": {"instance_action": action, "instance_id": instance_id, "runner": "instanceRunner"},
        "group": "space-xy",
        "modified_by": "someone",
        "name": format!("{action}-spin{instance_id}"),
        "schedule_expression": "@yearly",
        "enabled": true
    }})
}

async fn create_and_run(app: &TestApp, body: &Value) -> String {
    let response = app
        .post_raw(
            "/v1/minion/acme/jobs/space-xy",
            ACCOUNT_KEY,
            &body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.unwrap();
    let id = created["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["job"]["details"], body["job"]["details"],
        "details round-trip"
    );
    let response = app
        .send(
            Method::PATCH,
            &format!("/v1/minion/acme/jobs/space-xy/{id}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    id
}

async fn ended_run(app: &TestApp, job_id: &str) -> Value {
    eventually(Duration::from_secs(30), "the run to end", || async {
        app.runs(job_id)
            .await
            .into_iter()
            .find(|run| run["state"] == "succeeded" || run["state"] == "failed")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_actions_act_only_on_the_accounts_own_instances() {
    let moto = Moto::start().await;
    let mut env = TestEnv::new();
    env.settings.ec2.endpoint_url = moto.endpoint.clone();
    let ec2 = moto.ec2().await;
    let ours = moto.instance("acme", true).await;
    let theirs = moto.instance("globex", false).await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;

    // Start our stopped instance.
    let job = create_and_run(&app, &minion_job(&ours, "start")).await;
    let run = ended_run(&app, &job).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_legal_history(&run);
    eventually(Duration::from_secs(30), "our instance to run", || async {
        (state(&ec2, &ours).await == "running").then_some(())
    })
    .await;
    // Stop it again.
    let job = create_and_run(&app, &minion_job(&ours, "stop")).await;
    assert_eq!(ended_run(&app, &job).await["state"], "succeeded");
    eventually(Duration::from_secs(30), "our instance to stop", || async {
        (state(&ec2, &ours).await == "stopped").then_some(())
    })
    .await;

    // Another account's instance: refused, and left alone.
    let job = create_and_run(&app, &minion_job(&theirs, "stop")).await;
    let run = ended_run(&app, &job).await;
    assert_eq!(run["state"], "failed");
    assert!(
        run["error"].as_str().unwrap().contains("not tagged"),
        "{run}"
    );
    assert_eq!(state(&ec2, &theirs).await, "running");

    // A missing instance fails the run with the reason.
    let job = create_and_run(&app, &minion_job("i-0000000000000dead", "reboot")).await;
    let run = ended_run(&app, &job).await;
    assert_eq!(run["state"], "failed");

    // Bad details are refused at creation.
    let response = app
        .post_raw(
            "/v1/minion/acme/jobs/space-xy",
            ACCOUNT_KEY,
            &minion_job(&ours, "explode").to_string(),
        )
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.text().await.unwrap(),
        format!("unexpected action 'explode' for instance {ours}")
    );
    provisioner.stop().await;
}
