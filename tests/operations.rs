//! Seed 004's operation API (`POST /JobScheduler`): its input/*.json files replayed as written, and a
//! container job that really runs, read back through the surface and the resource API.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn operation(app: &TestApp, body: &str) -> (u16, Value) {
    let response = app.post_raw("/JobScheduler", ACCOUNT_KEY, body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

const SCHEDULE_JOB: &str = r#"{ "operation": "schedule", "payload": { "imageName": "node", "dateToRun": "2016-10-06T19:22:48.986Z", "environmentVariablesList": ["ENV=10","ENV=65"] } }"#;
const SCHEDULE_JOB1: &str = r#"{ "operation": "schedule", "payload": { "imageName": "ubuntu", "dateToRun": "2016-10-26T19:22:48.986Z", "environmentVariablesList": ["ENV=15","ENV=165"] } }"#;
const SCHEDULE_JOB2: &str = r#"{ "operation": "schedule", "payload": { "imageName": "mysql", "dateToRun": "2016-10-06T19:22:48.986Z", "environmentVariablesList": ["ENV=3","ENV=4"] } }"#;
const LIST_JOBS: &str = r#"{ "operation": "list", "payload": {} }"#;
const STATUS: &str = r#"{ "operation": "status", "payload": { "imageName": "ubuntu", "dateToRun": "2016-10-26T19:22:48.986Z" } }"#;

#[tokio::test]
async fn the_seeds_input_files_replay_as_written() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    for body in [SCHEDULE_JOB, SCHEDULE_JOB1, SCHEDULE_JOB2] {
        let (status, reply) = operation(&app, body).await;
        assert_eq!(status, 200);
        assert_eq!(
            reply,
            json!({"status": "OK", "mensagem": "Job agendado com sucesso"})
        );
    }
    let (status, list) = operation(&app, LIST_JOBS).await;
    assert_eq!(status, 200);
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 3);
    let (status, item) = operation(&app, STATUS).await;
    assert_eq!(status, 200);
    assert_eq!(item["imageName"], "ubuntu");
    assert_eq!(item["dateToRun"], "2016-10-26T19:22:48.986Z");
    assert_eq!(
        item["environmentVariablesList"],
        json!(["ENV=15", "ENV=165"])
    );
    assert_eq!(item["jobStatus"], "Scheduled");

    // The same image and instant again changes nothing.
    let (status, _) = operation(&app, SCHEDULE_JOB1).await;
    assert_eq!(status, 200);
    let (_, list) = operation(&app, LIST_JOBS).await;
    assert_eq!(list.as_array().unwrap().len(), 3);

    let (status, reply) = operation(&app, r#"{"operation": "status", "payload": {"imageName": "ubuntu", "dateToRun": "2030-01-01T00:00:00Z"}}"#).await;
    assert_eq!(
        (status, reply),
        (404, json!({"errorMessage": "Job não encontrado"}))
    );
    let (status, reply) = operation(&app, r#"{"operation": "explode", "payload": {}}"#).await;
    assert_eq!(
        (status, reply),
        (
            400,
            json!({"errorMessage": "Operação desconhecida: explode", "field": "operation"})
        )
    );
    let (status, _) = operation(
        &app,
        r#"{"operation": "schedule", "payload": {"imageName": "node"}}"#,
    )
    .await;
    assert_eq!(status, 400);

    // Without its run's secret, a callback terminates nothing (the seed let anyone terminate anything).
    let (status, _) = operation(&app, r#"{"operation": "callback", "payload": { "imageName": "node", "dateToRun": "2016-10-06T19:22:48.986Z" }}"#).await;
    assert_eq!(status, 403);
    // Another account sees none of it; no key, nothing at all.
    let response = app
        .post_raw("/JobScheduler", OTHER_ACCOUNT_KEY, LIST_JOBS)
        .await;
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));
    assert_eq!(
        app.post_raw("/JobScheduler", "", LIST_JOBS).await.status(),
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_and_is_not_reset_by_scheduling_it_again() {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let date = Utc::now().to_rfc3339();
    let schedule = json!({"operation": "schedule", "payload": {"imageName": image, "dateToRun": date, "environmentVariablesList": ["ENV=10"]}});
    let status = json!({"operation": "status", "payload": {"imageName": image, "dateToRun": date}});
    assert_eq!(operation(&app, &schedule.to_string()).await.0, 200);

    let item = eventually(Duration::from_secs(60), "TerminatedOK", || async {
        let (_, item) = operation(&app, &status.to_string()).await;
        (item["jobStatus"] == "TerminatedOK").then_some(item)
    })
    .await;
    assert!(item["instanceId"].as_str().unwrap().starts_with("local-"));

    // Scheduling it again neither resets nor re-runs it.
    assert_eq!(operation(&app, &schedule.to_string()).await.0, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, item) = operation(&app, &status.to_string()).await;
    assert_eq!(item["jobStatus"], "TerminatedOK");
    // The resource API shows the same job, with its one run.
    let jobs: Value = app
        .get("/v1/jobs?group=jobscheduler", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    let id = jobs["jobs"][0]["id"].as_str().unwrap();
    let runs = app.runs(id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["state"], "succeeded");
    provisioner.stop().await;
    reaper.stop().await;
}
