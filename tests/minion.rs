//! Minion's surface (seed 000, NOTES section 1): its README examples and documented behaviour replayed
//! against the running api, and a dummy job that really runs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use spot_tests::*;

/// The README's create request, verbatim.
fn readme_body() -> Value {
    json!({
        "job": {
            "description": "Do some dumb thing to my server",
            "details": {"runner": "dummyRunner"},
            "group": "space-xy",
            "modified_by": "someone",
            "name": "dummy-spin1234567",
            "schedule_expression": "* * * ? *",
            "enabled": true
        },
        "tags": [{"key": "foo", "value": "bar"}, {"key": "baz", "value": "biz"}]
    })
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, String) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.header("X-Auth-Token", key);
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn public_endpoints_cors_and_keys() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let (status, body) = call(&app, Method::GET, "/v1/minion/ping", None, None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "pong"));
    let (status, body) = call(&app, Method::GET, "/v1/minion/version", None, None).await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).unwrap();
    for key in ["version", "githash", "buildstamp"] {
        assert!(version[key].is_string(), "{version}");
    }
    let (status, body) = call(&app, Method::GET, "/v1/minion/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE"), "{body}");

    let response = app
        .client
        .request(Method::OPTIONS, app.url("/v1/minion/acme/jobs/space-xy"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        response.headers()["access-control-allow-headers"],
        "X-Auth-Token"
    );

    // No key, a wrong key: 403 with an empty body, whether the account exists or not.
    for key in [None, Some("wrong")] {
        for account in ["acme", "nobody"] {
            let path = format!("/v1/minion/{account}/jobs");
            let (status, body) = call(&app, Method::GET, &path, key, None).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::FORBIDDEN, ""),
                "key {key:?}"
            );
        }
    }
    // Another account's key: answered as if the account did not exist (nothing is revealed).
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/minion/acme/jobs",
        Some(OTHER_ACCOUNT_KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "account not found: acme")
    );
    // The bcrypt hash of the key, as minion's clients send it.
    let hashed = bcrypt::hash(ACCOUNT_KEY, 4).unwrap();
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/minion/acme/jobs",
        Some(&hashed),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/minion/nobody/jobs",
        Some(ACCOUNT_KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "account not found: nobody")
    );
}

#[tokio::test]
async fn the_readme_job_lifecycle() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let key = Some(ACCOUNT_KEY);
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&readme_body()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let job = created["job"].as_object().unwrap();
    let keys: Vec<&str> = job.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "account",
            "description",
            "details",
            "group",
            "id",
            "modified_at",
            "modified_by",
            "name",
            "schedule_expression",
            "enabled"
        ]
    );
    assert_eq!(job["account"], "acme");
    assert_eq!(job["details"], json!({"runner": "dummyRunner"}));
    assert_eq!(job["schedule_expression"], "* * * ? *");
    assert!(
        job["modified_at"].as_str().unwrap().ends_with('Z')
            && !job["modified_at"].as_str().unwrap().contains('.')
    );
    assert_eq!(created["tags"], readme_body()["tags"]);
    let next = created["next"].as_str().unwrap();
    assert!(
        next.ends_with(":00Z"),
        "every minute fires on the minute: {next}"
    );
    let id = job["id"].as_str().unwrap().to_string();

    let (status, body) = call(&app, Method::GET, "/v1/minion/acme/jobs", key, None).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (StatusCode::OK, json!([format!("space-xy/{id}")]))
    );
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/minion/acme/jobs/space-xy",
        key,
        None,
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (StatusCode::OK, json!([id]))
    );
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/minion/acme/jobs/other-group",
        key,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));

    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["job"], created["job"]);
    assert!(shown["log"].is_object());

    // Tags belong to the job: a second job in the group has its own.
    let mut other = readme_body();
    other["tags"] = json!([{"key": "only", "value": "mine"}]);
    let (_, body) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&other),
    )
    .await;
    let other_id = serde_json::from_str::<Value>(&body).unwrap()["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, body) = call(
        &app,
        Method::GET,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["tags"],
        readme_body()["tags"]
    );

    let mut update = readme_body();
    update["job"]["description"] = json!("Do it hourly");
    update["job"]["schedule_expression"] = json!("@hourly");
    let (status, body) = call(
        &app,
        Method::PUT,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        Some(&update),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let updated: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(updated["job"]["description"], "Do it hourly");
    assert_eq!(updated["job"]["id"], id.as_str());
    assert!(updated["next"].as_str().unwrap().ends_with(":00:00Z"));
    let (status, _) = call(
        &app,
        Method::PUT,
        "/v1/minion/acme/jobs/space-xy/nosuchjob",
        key,
        Some(&update),
    )
    .await;
    assert_eq!(status, 404);

    // The resource API sees the same job.
    let resource: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resource["schedule"], "@hourly");
    assert_eq!(resource["group"], "space-xy");

    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, "OK"));
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::ACCEPTED, "OK"),
        "deleting what is gone succeeds"
    );
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = call(
        &app,
        Method::DELETE,
        "/v1/minion/acme/jobs/space-xy",
        key,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, "OK"));
    let (_, body) = call(
        &app,
        Method::GET,
        &format!("/v1/minion/acme/jobs/space-xy/{other_id}"),
        key,
        None,
    )
    .await;
    assert!(body.contains("not found"));
}

#[tokio::test]
async fn strict_field_types_and_refused_runners() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let key = Some(ACCOUNT_KEY);
    // NOTES 1.11: each of these must fail.
    for bad_job in [
        json!({"description": false}),
        json!({"details": false}),
        json!({"details": {"foo": false}}),
        json!({"group": false}),
        json!({"id": false}),
        json!({"modified_at": false}),
        json!({"modified_at": "12345"}),
        json!({"modified_by": false}),
        json!({"name": false}),
        json!({"schedule_expression": ""}),
        json!({"schedule_expression": false}),
        json!({"schedule_expression": "broke"}),
        json!({"enabled": "false"}),
    ] {
        let mut body = readme_body();
        for (k, v) in bad_job.as_object().unwrap() {
            body["job"][k] = v.clone();
        }
        let (status, text) = call(
            &app,
            Method::POST,
            "/v1/minion/acme/jobs/space-xy",
            key,
            Some(&body),
        )
        .await;
        assert_eq!(status, 400, "{bad_job}: {text}");
        assert!(!text.is_empty());
    }
    let (status, text) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&json!({"tags": []})),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "job cannot be nil")
    );
    // A runner the account may not use is refused, and nothing is stored.
    let (status, text) = call(
        &app,
        Method::POST,
        "/v1/minion/globex/jobs/space-xy",
        Some(OTHER_ACCOUNT_KEY),
        Some(&readme_body()),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "runner not found for account")
    );
    let mut unknown = readme_body();
    unknown["job"]["details"] = json!({"runner": "noSuchRunner"});
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&unknown),
    )
    .await;
    assert_eq!(status, 400);
    for (account, key) in [("acme", ACCOUNT_KEY), ("globex", OTHER_ACCOUNT_KEY)] {
        let (_, body) = call(
            &app,
            Method::GET,
            &format!("/v1/minion/{account}/jobs"),
            Some(key),
            None,
        )
        .await;
        assert_eq!(body, "[]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dummy_job_runs_now_and_on_schedule() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let key = Some(ACCOUNT_KEY);
    // Created and run at once: minion dropped such a run (its cache did not know the job yet).
    let (_, body) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&readme_body()),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = call(
        &app,
        Method::PATCH,
        &format!("/v1/minion/acme/jobs/space-xy/{id}"),
        key,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, "OK"));
    let run = eventually(Duration::from_secs(30), "the dummy run", || async {
        app.runs(&id)
            .await
            .into_iter()
            .find(|run| run["state"] == "succeeded")
    })
    .await;
    assert_legal_history(&run);
    let output = app.run_log(&run).await;
    assert_eq!(output, "Hello, acme!");

    // On a schedule (every 2 s), each run at its instant.
    let mut every_two = readme_body();
    every_two["job"]["schedule_expression"] = json!("*/2 * * * * *");
    let (_, body) = call(
        &app,
        Method::POST,
        "/v1/minion/acme/jobs/space-xy",
        key,
        Some(&every_two),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let runs = eventually(Duration::from_secs(30), "two scheduled runs", || async {
        let runs = app.runs(&id).await;
        (runs.iter().filter(|r| r["state"] == "succeeded").count() >= 2).then_some(runs)
    })
    .await;
    for run in runs.iter().filter(|r| r["state"] == "succeeded") {
        let at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(run["scheduled_at"].clone()).unwrap();
        assert_eq!(at.timestamp() % 2, 0);
    }
    provisioner.stop().await;
}

/// Out of the box, as `scripts/up` configures the stack (one account, `default`, and no `[minion]`
/// section): the README's minion request, taken from README.md as written, is answered 200.
#[tokio::test]
async fn the_readme_minion_request_works_with_the_default_account() {
    let env = TestEnv::new();
    let mut settings = env.settings.clone();
    let out_of_the_box = spot_shared::config::Settings::from_toml(
        r#"
        [[auth.accounts]]
        name = "default"
        keys = ["the-key-scripts-up-printed"]
        "#,
    )
    .unwrap();
    settings.auth.accounts = out_of_the_box.auth.accounts;
    settings.minion = out_of_the_box.minion;
    let app = spawn_app_with(settings).await;

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let body = readme
        .lines()
        .find_map(|line| {
            let line = line.trim().strip_prefix("--data '")?;
            line.contains("dummyRunner")
                .then(|| line.trim_end_matches(['\\', ' ']).trim_end_matches('\''))
        })
        .expect("the README's minion example");
    let url = readme
        .lines()
        .find(|line| line.contains("/v1/minion/default/jobs/"))
        .and_then(|line| line.trim().strip_prefix("http://127.0.0.1:8080"))
        .expect("the README's minion URL")
        .trim();
    let response = app
        .client
        .post(app.url(url))
        .header("X-Auth-Token", "the-key-scripts-up-printed")
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["job"]["name"], "hello", "{answer}");
    assert_eq!(answer["job"]["group"], "examples", "{answer}");
    let listed = app
        .get("/v1/minion/default/jobs", "the-key-scripts-up-printed")
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
}
