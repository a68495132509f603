//! Seed 002's API (`/jobs`): its README example as written, and a command and an uploaded script that
//! really run in containers, read back through the surface and the resource API.

use std::collections::HashMap;
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
        let log = app.run_log(&run).await;
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

/// Seed 002's samples name their scripts by URL. Here scripts come from moto's S3 (as `s3://` and in the
/// seed's own `http://s3.amazonaws.com/…` spelling, both signed with the environment's credentials:
/// moto refuses an anonymous read) and from an HTTPS server with a test CA (through a redirect, its
/// `sha256` checked), and run to their end; a wrong digest, a file over the size cap and a missing
/// object end their runs `failed` with the reason, and the script never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripts_named_by_url_are_fetched_on_the_instance_and_checked() {
    use sha2::Digest;
    use spot_tests::https_files::{Answer, HttpsFiles};

    let mut env = TestEnv::new();
    spot_tests::image::busybox_image().await;
    let moto = Moto::start().await;
    let bucket = format!(
        "spot-exec-{}",
        env.name.to_ascii_lowercase().replace('_', "-")
    );
    let http = reqwest::Client::new();
    for (url, body) in [
        (format!("{}/{bucket}", moto.endpoint), String::new()),
        (
            format!("{}/{bucket}/scripts/hello.sh", moto.endpoint),
            "echo from s3\n".to_string(),
        ),
    ] {
        let response = http.put(&url).body(body).send().await.unwrap();
        assert!(response.status().is_success(), "moto PUT {url}");
    }
    let anonymous = http
        .get(format!("{}/{bucket}/scripts/hello.sh", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        403,
        "the object is private: a fetch must sign"
    );

    let script = b"echo from https\n".to_vec();
    let digest = hex::encode(sha2::Sha256::digest(&script));
    let server = HttpsFiles::start(HashMap::from([
        ("/tool.sh".to_string(), Answer::File(script)),
        (
            "/latest".to_string(),
            Answer::RedirectTo("/tool.sh".to_string()),
        ),
        ("/big.sh".to_string(), Answer::File(vec![b'#'; 100 * 1024])),
    ]))
    .await;
    env.settings.fetch.s3_endpoint_url = moto.endpoint.clone();
    env.settings.fetch.ca_file = server.write_ca(&env.dir());
    env.settings.fetch.max_bytes = 64 * 1024;
    env.settings.outbound.allow_loopback = true;
    let app = spawn_app(&env).await;

    // Refused at the door, naming the field, storing nothing.
    for (body, field, says) in [
        (
            json!({"executable": "http://example.com/run.sh", "type": "script"}),
            "executable",
            "https",
        ),
        (
            json!({"executable": "s3://No_Such/x", "type": "script"}),
            "executable",
            "bucket",
        ),
        (
            json!({"executable": "https://169.254.169.254/latest/meta-data/", "type": "script"}),
            "executable",
            "link-local",
        ),
        (
            json!({"executable": "https://metadata.google.internal/x", "type": "binary"}),
            "executable",
            "metadata",
        ),
        (
            json!({"executable": server.url("/tool.sh"), "type": "script", "sha256": "abc"}),
            "sha256",
            "64",
        ),
        (
            json!({"executable": "echo hi", "type": "command", "sha256": digest}),
            "sha256",
            "script",
        ),
    ] {
        let mut body = body;
        body["schedule"] = json!("*/2 * * * * *");
        let response = app.post_raw("/jobs", ACCOUNT_KEY, &body.to_string()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{body}: {error}"
        );
    }
    let listed: Value = app.get("/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed, json!([]), "refused jobs stored nothing");

    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let cases = [
        (
            json!({"executable": format!("s3://{bucket}/scripts/hello.sh")}),
            "finished",
            "from s3\n",
        ),
        (
            json!({"executable": format!("http://s3.amazonaws.com/{bucket}/scripts/hello.sh")}),
            "finished",
            "from s3\n",
        ),
        (
            json!({"executable": server.url("/latest"), "sha256": digest}),
            "finished",
            "from https\n",
        ),
        (
            json!({"executable": server.url("/tool.sh"), "sha256": "0".repeat(64)}),
            "error",
            "SHA-256",
        ),
        (
            json!({"executable": server.url("/big.sh")}),
            "error",
            "larger than the 65536-byte limit",
        ),
        (
            json!({"executable": format!("s3://{bucket}/scripts/missing.sh")}),
            "error",
            "NoSuchKey",
        ),
    ];
    let mut ids = Vec::new();
    for (body, _, _) in &cases {
        let mut body = body.clone();
        body["type"] = json!("script");
        body["schedule"] = json!("*/2 * * * * *");
        let response = app.post_raw("/jobs", ACCOUNT_KEY, &body.to_string()).await;
        assert_eq!(response.status(), 200, "{body}");
        let job: Value = response.json().await.unwrap();
        assert_eq!(
            job["executable"], body["executable"],
            "the document names the URL as given"
        );
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for (id, (body, status, expected)) in ids.iter().zip(&cases) {
        let run = eventually(Duration::from_secs(90), "a run to end", || async {
            app.runs(id)
                .await
                .into_iter()
                .find(|run| run["state"] == "succeeded" || run["state"] == "failed")
        })
        .await;
        let _ = app
            .send(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/disable"),
                ACCOUNT_KEY,
                None,
            )
            .await;
        let job: Value = app
            .get(&format!("/jobs/{id}"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(job["status"], *status, "{body}: {run}");
        let log = app.run_log(&run).await;
        if *status == "finished" {
            assert_eq!(log, *expected, "{body}");
        } else {
            let error = run["error"].as_str().unwrap_or_default();
            assert!(error.contains(expected), "{body}: the run says why: {run}");
            assert!(error.contains("cannot fetch"), "{body}: {run}");
            assert_eq!(log, "", "{body}: the script never ran");
        }
    }
    assert!(
        server.hits("/latest") >= 1 && server.hits("/tool.sh") >= 2,
        "the redirect was followed"
    );
    provisioner.stop().await;
    reaper.stop().await;
}
