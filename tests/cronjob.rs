//! Seed 002's API (`/jobs`): its README example as written, and a command and an uploaded script that
//! really run in containers, read back through the surface and the resource API.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use spot_tests::*;

#[tokio::test]
async fn the_readme_example_and_the_seeds_bugs_fixed() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let list: Value = app.get("/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(list, json!([]), "an empty list is [], not null");

    let response = app
        .post_raw(
            "/jobs",
            ACCOUNT_KEY,
            r#"{"executable":"ls -la", "schedule":"4 * * * *", "type": "command"}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["executable"], "ls -la");
    assert_eq!(job["schedule"], "4 * * * *");
    assert_eq!(job["type"], "command");
    let id = job["id"].as_str().unwrap();

    let list: Value = app.get("/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(list, json!([job]));
    let shown: Value = app
        .get(&format!("/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown, job);
    assert_eq!(app.get("/jobs/nosuchjob", ACCOUNT_KEY).await.status(), 404);
    assert_eq!(
        app.get(&format!("/jobs/{id}"), OTHER_ACCOUNT_KEY)
            .await
            .status(),
        404
    );

    for (body, field) in [
        (
            r#"{"executable":"ls", "schedule":"4 * * * *", "type": "macro"}"#,
            "type",
        ),
        (
            r#"{"executable":"ls", "schedule":"61 * * * *", "type": "command"}"#,
            "schedule",
        ),
        (
            r#"{"executable":"", "schedule":"4 * * * *", "type": "command"}"#,
            "executable",
        ),
        (
            r#"{"executable":"not base64!", "schedule":"4 * * * *", "type": "script"}"#,
            "executable",
        ),
        (
            r#"{"schedule":"4 * * * *", "type": "command"}"#,
            "executable",
        ),
    ] {
        let response = app.post_raw("/jobs", ACCOUNT_KEY, body).await;
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["field"],
            field,
            "{body}"
        );
    }
    let list: Value = app.get("/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "bad requests stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_and_uploaded_scripts_run_in_containers() {
    let env = TestEnv::new();
    spot_tests::image::busybox_image().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;

    let script =
        base64::engine::general_purpose::STANDARD.encode("echo from the script\necho \"$0\"\n");
    let command = json!({"executable": "echo 'a command' && exit 0", "schedule": "*/2 * * * * *", "type": "command"});
    let script = json!({"executable": script, "schedule": "*/2 * * * * *", "type": "script"});
    let failing = json!({"executable": "exit 4", "schedule": "*/2 * * * * *", "type": "command"});
    let mut ids = Vec::new();
    for body in [&command, &script, &failing] {
        let job: Value = app
            .post_raw("/jobs", ACCOUNT_KEY, &body.to_string())
            .await
            .json()
            .await
            .unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for (id, status, output) in [
        (&ids[0], "finished", "a command\n"),
        (&ids[1], "finished", "from the script\n/spot/executable\n"),
        (&ids[2], "error", ""),
    ] {
        let job: Value = eventually(Duration::from_secs(60), "a run to end", || async {
            let job: Value = app
                .get(&format!("/jobs/{id}"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .unwrap();
            (job["status"] != "scheduled").then_some(job)
        })
        .await;
        assert_eq!(job["status"], status, "{job}");
        let run = app
            .runs(id)
            .await
            .into_iter()
            .find(|run| run["state"] == "succeeded" || run["state"] == "failed")
            .unwrap();
        let log = app
            .get(
                &format!("/v1/runs/{}/logs", run["id"].as_str().unwrap()),
                ACCOUNT_KEY,
            )
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(log, output, "{job}");
        let _ = app
            .send(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/disable"),
                ACCOUNT_KEY,
                None,
            )
            .await;
    }
    provisioner.stop().await;
    reaper.stop().await;
}
