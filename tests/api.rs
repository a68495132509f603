//! The simple API's contract: seed 003's examples, bad input refused with 400 naming the field and
//! nothing stored, unknown ids 404, keys and run secrets enforced.

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use spot_shared::store::FireRecord;
use spot_tests::*;

async fn job_count(app: &TestApp) -> usize {
    let list: Value = app.get("/list", ACCOUNT_KEY).await.json().await.unwrap();
    list["jobs"].as_array().unwrap().len()
}

#[tokio::test]
async fn seed_003_example_is_scheduled_and_its_status_has_the_seed_shape() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    // Seed 003's body, verbatim but for a future date.
    let body = r#"{
      "schedule": "2099-11-22T19:39:22Z",
      "docker_image": "alpine:latest",
      "env": ["key=value", "key1=value=1"],
      "cmd": "sleep 60"
    }"#;
    let response = app.post_raw("/schedule", ACCOUNT_KEY, body).await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["status"], "scheduled");
    assert_eq!(reply["message"], "job successfully scheduled");
    let id = reply["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);

    let status = app.status(id).await;
    assert_eq!(status["id"], id);
    assert_eq!(status["status"], "scheduled");
    assert_eq!(status["schedule"], "2099-11-22T19:39:22Z");
    for key in ["instance_id", "dns_name", "ready", "ip_address", "state"] {
        assert!(status["aws"].get(key).is_some(), "aws.{key} missing");
    }
    assert_eq!(
        status["docker"]["environment"],
        json!(["key=value", "key1=value=1"])
    );
    assert_eq!(status["docker"]["command"], "sleep 60");
    assert_eq!(status["docker"]["docker_image"], "alpine:latest");
    assert_eq!(status["docker"]["container_exit_code"], "");
    for key in ["container_id", "container_status"] {
        assert!(status["docker"].get(key).is_some(), "docker.{key} missing");
    }
    // Seed 003's `celery` object: the run's id as `job_parent_id`, null before the first run.
    assert_eq!(status["celery"], json!({"job_parent_id": null}));

    // An instant without an offset is UTC, as in the seed's 2016-11-18T23:59:59.
    let response = app
        .post_raw(
            "/schedule",
            ACCOUNT_KEY,
            r#"{"schedule": "2099-11-18T23:59:59", "docker_image": "alpine"}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.status(&id).await["next_fire_at"],
        "2099-11-18T23:59:59Z"
    );

    // A cron job made through another surface is not a 003 client's to parse: /list leaves it out.
    app.create_job(
        ACCOUNT_KEY,
        json!({"schedule": "* * * * *", "runner": {"type": "dummy", "template": "x"}}),
    )
    .await;
    let list: Value = app.get("/list", ACCOUNT_KEY).await.json().await.unwrap();
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{list}");
    assert!(jobs.iter().all(|job| job["status"] == "scheduled"
        && job["schedule"]
            .as_str()
            .is_some_and(|at| spot_shared::schedule::parse_instant(at).is_some())));
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field_and_stores_nothing() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let cases = [
        (r#"{"docker_image": "alpine"}"#, "schedule"),
        (
            r#"{"schedule": "next tuesday", "docker_image": "alpine"}"#,
            "schedule",
        ),
        (
            r#"{"schedule": "2099-02-30T10:00:00Z", "docker_image": "alpine"}"#,
            "schedule",
        ),
        (r#"{"schedule": 12, "docker_image": "alpine"}"#, "schedule"),
        (r#"{"schedule": "2099-01-01T00:00:00Z"}"#, "docker_image"),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": ""}"#,
            "docker_image",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "   "}"#,
            "docker_image",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "env": ["ok=1", "novalue"]}"#,
            "env[1]",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "env": "k=v"}"#,
            "env",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "cmd": "echo 'open"}"#,
            "cmd",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "shedule": "x"}"#,
            "shedule",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "max_price": "cheap"}"#,
            "max_price",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "max_price": "-1"}"#,
            "max_price",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "subnets": ["sg-123"]}"#,
            "subnets",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "disk_gb": 0}"#,
            "disk_gb",
        ),
        (
            r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "on_demand_fallback": "yes"}"#,
            "on_demand_fallback",
        ),
        ("schedule=2099-01-01&docker_image=alpine", "body"),
        ("", "body"),
        ("[1, 2]", "body"),
    ];
    for (body, field) in cases {
        let response = app.post_raw("/schedule", ACCOUNT_KEY, body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }
    assert_eq!(job_count(&app).await, 0);

    // A body over the configured limit is refused too.
    let huge = format!(
        r#"{{"schedule": "2099-01-01T00:00:00Z", "docker_image": "a", "cmd": "{}"}}"#,
        "x".repeat(300_000)
    );
    let response = app.post_raw("/schedule", ACCOUNT_KEY, &huge).await;
    assert!(response.status().is_client_error(), "{}", response.status());
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test]
async fn keys_decide_who_sees_what() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let body = r#"{"schedule": "2099-01-01T00:00:00Z", "docker_image": "alpine"}"#;

    for key in ["", "wrong-key"] {
        let response = app.post_raw("/schedule", key, body).await;
        assert_eq!(response.status(), 403, "key {key:?}");
        assert_eq!(app.get("/list", key).await.status(), 403);
    }
    assert_eq!(job_count(&app).await, 0);

    let response = app.post_raw("/schedule", ACCOUNT_KEY, body).await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another account neither sees nor lists it.
    assert_eq!(
        app.get(&format!("/status/{id}"), OTHER_ACCOUNT_KEY)
            .await
            .status(),
        404
    );
    let list: Value = app
        .get("/list", OTHER_ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"], json!([]));
    // Unknown ids are 404 with a message.
    let response = app.get("/status/nosuchjob", ACCOUNT_KEY).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert!(error["message"].as_str().unwrap().contains("nosuchjob"));
}

#[tokio::test]
async fn healthcheck_is_open_and_reports_redis_and_rabbitmq() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let response = app
        .client
        .get(app.url("/healthcheck"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["redis"], "ok");
    assert_eq!(health["rabbitmq"], "ok");
}

/// A job and its recorded run, as the provisioner leaves them before launching.
async fn launched_run(env: &TestEnv, app: &TestApp) -> (String, String) {
    let body = json!({"schedule": "2099-01-01T00:00:00Z", "docker_image": "alpine"});
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    let job_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = env.store().await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let record = store.record_fire(&job, 1, Utc::now(), 1).await.unwrap();
    let FireRecord::New(run_id) = record else {
        panic!("{record:?}")
    };
    (job_id, run_id)
}

#[tokio::test]
async fn callbacks_need_the_runs_secret_and_touch_only_its_instance() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    // Two runs, each with an instance and a secret, as the provisioner leaves them.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (job_id, run_id) = launched_run(&env, &app).await;
        let secret = spot_shared::ids::new_secret();
        let instance_id = format!("local-{run_id}-1");
        store
            .set_run_fields(
                &run_id,
                &[
                    ("secret_hash", spot_shared::ids::hash_secret(&secret)),
                    ("instance_id", instance_id.clone()),
                ],
            )
            .await
            .unwrap();
        store
            .create_instance(&spot_shared::model::Instance {
                id: instance_id.clone(),
                run_id: run_id.clone(),
                provider: "local".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .advance_run(&run_id, spot_shared::model::RunState::Provisioning, &[])
            .await
            .unwrap();
        store
            .advance_run(&run_id, spot_shared::model::RunState::Booting, &[])
            .await
            .unwrap();
        runs.push((job_id, run_id, instance_id, secret));
    }
    let (job_a, run_a, instance_a, secret_a) = &runs[0];
    let (_, run_b, instance_b, secret_b) = &runs[1];

    let callback = |instance: &str, secret: &str, action: &str| {
        let body =
            json!({"action": action, "job_id": job_a, "instance_id": instance, "exit_code": 0});
        app.client
            .post(app.url("/callback"))
            .header("X-Run-Secret", secret.to_string())
            .json(&body)
            .send()
    };
    // Seed 003's body with no secret, a wrong secret, or another run's secret: 403.
    assert_eq!(
        callback(instance_a, "", "terminate")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        callback(instance_a, "guess", "terminate")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        callback(instance_a, secret_b, "terminate")
            .await
            .unwrap()
            .status(),
        403
    );
    // Run A's secret naming run B's instance: 403.
    assert_eq!(
        callback(instance_b, secret_a, "terminate")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        callback("i-0bfe22184ff4c092c", secret_a, "terminate")
            .await
            .unwrap()
            .status(),
        403
    );
    // The agent endpoints too.
    let response = app
        .client
        .get(app.url(&format!("/agent/runs/{run_a}")))
        .header("X-Run-Secret", secret_b.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // Nothing changed.
    for run in [run_a, run_b] {
        let run = store.get_run(run).await.unwrap().unwrap();
        assert_eq!(run.state, spot_shared::model::RunState::Booting);
    }
    for instance in [instance_a, instance_b] {
        let instance = store.get_instance(instance).await.unwrap().unwrap();
        assert_eq!(instance.state, spot_shared::model::InstanceState::Requested);
    }

    // A bad action is a 400; the right secret works.
    assert_eq!(
        callback(instance_a, secret_a, "explode")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        callback(instance_a, secret_a, "update")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        callback(instance_a, secret_a, "terminate")
            .await
            .unwrap()
            .status(),
        200
    );
    let run = store.get_run(run_a).await.unwrap().unwrap();
    assert_eq!(run.state, spot_shared::model::RunState::Succeeded);
    assert_eq!(run.exit_code, Some(0));
    let instance = store.get_instance(instance_a).await.unwrap().unwrap();
    assert_eq!(
        instance.state,
        spot_shared::model::InstanceState::Terminating
    );
    // The run is over: it cannot be moved back to running.
    assert_eq!(
        callback(instance_a, secret_a, "update")
            .await
            .unwrap()
            .status(),
        409
    );
    let _ = run_b;
}

#[tokio::test]
async fn a_fire_is_recorded_once_however_often_it_arrives() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let body = json!({"schedule": "2099-01-01T00:00:00Z", "docker_image": "alpine"});
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    let job_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = env.store().await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let at = job.next_fire_at.unwrap();

    let first = store.record_fire(&job, 1, at, 1).await.unwrap();
    let FireRecord::New(run_id) = first else {
        panic!("{first:?}")
    };
    for _ in 0..3 {
        assert_eq!(
            store.record_fire(&job, 1, at, 1).await.unwrap(),
            FireRecord::Existing(run_id.clone())
        );
    }
    assert_eq!(store.job_run_ids(&job_id, 0).await.unwrap(), vec![run_id]);
    // A timer armed for another generation of the job records nothing.
    let later = at + chrono::Duration::seconds(1);
    assert_eq!(
        store.record_fire(&job, 7, later, 1).await.unwrap(),
        FireRecord::Stale
    );
    assert_eq!(store.job_run_ids(&job_id, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_openapi_document_describes_routes_the_api_serves() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/schedule",
        "/list",
        "/status/{id}",
        "/callback",
        "/healthcheck",
        "/v1/jobs",
        "/v1/jobs/{id}/next",
        "/v1/runs/{id}/children",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    // A run's place in an array job, and the runner's array fields.
    let schemas = doc["components"]["schemas"].to_string();
    for field in [
        "array_parent",
        "array_index",
        "array_succeeded",
        "array_parallelism",
    ] {
        assert!(schemas.contains(field), "{field} is not documented");
    }
    // Every documented operation is routed (an unknown route would answer "no such route").
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{id}", "nosuchid"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), url)
                .header("X-Auth-Token", ACCOUNT_KEY)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, 405, "{method} {path}");
            operations += 1;
        }
    }
    assert!(operations >= 17, "{operations} operations documented");
    assert!(doc["components"]["schemas"]["JobRequest"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

/// Instants outside the years 1970–9999 are refused at the door, naming the field; a stored job or
/// run that cannot be read back is left out of listings instead of failing them.
#[tokio::test]
async fn instants_are_bounded_and_one_unreadable_record_never_fails_a_listing() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    for (path, body, field) in [
        (
            "/schedule",
            json!({"schedule": "-0001-01-01T00:00:00", "docker_image": "busybox"}),
            "schedule",
        ),
        (
            "/v1/jobs",
            json!({"schedule": "0100-01-01T00:00:00Z", "runner": {"type": "dummy", "template": "x"}}),
            "schedule",
        ),
        (
            "/v1/jobs",
            json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"},
                   "policies": {"end_at": "0001-01-01T00:00:00Z"}}),
            "policies.end_at",
        ),
    ] {
        let response = app.post_raw(path, ACCOUNT_KEY, &body.to_string()).await;
        assert_eq!(response.status(), 400, "{body}");
        let reply: serde_json::Value = response.json().await.unwrap();
        assert_eq!(reply["field"], field, "{reply}");
    }

    // One-shot, so that seed 003's /list lists it too.
    let good = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "2099-01-01T00:00:00Z", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    // A record that cannot be read back, as a bug or a hand edit could leave one.
    let client = redis::Client::open(env.settings.redis.url.expose_secret()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{}:job:broken", env.name))
        .arg("{not json")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{}:account:acme:jobs", env.name))
        .arg(Utc::now().timestamp_millis() + 1000)
        .arg("broken")
        .query(&mut conn)
        .unwrap();
    for path in ["/list", "/v1/jobs"] {
        let response = app.get(path, ACCOUNT_KEY).await;
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains(&good), "{path}: {text}");
    }
}

/// POSTs `body` to `path` with an `Idempotency-Key`; the status, the `Idempotent-Replayed` header and
/// the body.
async fn post_keyed(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: &str,
    key: &str,
) -> (u16, bool, String) {
    let response = app
        .client
        .post(app.url(path))
        .header("X-Auth-Token", ACCOUNT_KEY)
        .header("Content-Type", content_type)
        .header("Idempotency-Key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    (status, replayed, response.text().await.unwrap())
}

/// How many jobs the account holds, over every surface.
async fn jobs_held(app: &TestApp) -> usize {
    let reply: Value = app
        .get("/v1/jobs?limit=1000", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    reply["jobs"].as_array().map(Vec::len).unwrap_or(0)
}

/// A client whose answer was lost sends the same request with the same key again: on every surface
/// that creates a job it gets the first answer, status and body, and no second job is made. The same
/// key with another body is a 422 naming the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_sent_again_with_its_idempotency_key_answers_the_first_answer() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let at = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let json_type = "application/json";
    let creates = [
        (
            "/v1/jobs",
            json_type,
            json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}})
                .to_string(),
        ),
        (
            "/schedule",
            json_type,
            json!({"docker_image": "busybox", "schedule": at}).to_string(),
        ),
        (
            "/jobs",
            json_type,
            r#"{"executable":"ls -la", "schedule":"4 * * * *", "type": "command"}"#.to_string(),
        ),
        (
            "/tasks",
            "application/x-www-form-urlencoded",
            "action_url=http%3A%2F%2F127.0.0.1%3A9%2Fwork".to_string(),
        ),
        (
            "/v1/minion/acme/jobs/space-xy",
            json_type,
            json!({"job": {"name": "once", "details": {"runner": "dummyRunner"},
                "schedule_expression": "* * * ? *", "enabled": true}})
            .to_string(),
        ),
    ];
    for (n, (path, content_type, body)) in creates.iter().enumerate() {
        let key = format!("create-{n}");
        let before = jobs_held(&app).await;
        let first = post_keyed(&app, path, content_type, body, &key).await;
        assert!((200..300).contains(&first.0), "{path}: {first:?}");
        assert!(!first.1, "{path}: the first answer is not a replay");
        let again = post_keyed(&app, path, content_type, body, &key).await;
        assert_eq!((again.0, &again.2), (first.0, &first.2), "{path}");
        assert!(again.1, "{path}: a replay says so");
        assert_eq!(jobs_held(&app).await, before + 1, "{path}: one job made");

        let other = post_keyed(&app, path, content_type, &format!("{body} "), &key).await;
        assert_eq!(other.0, 422, "{path}: {other:?}");
        assert!(other.2.contains("Idempotency-Key"), "{}", other.2);
        assert_eq!(jobs_held(&app).await, before + 1, "{path}: still one job");
    }
    // Without a key, each request is its own.
    let (path, content_type, body) = &creates[0];
    for _ in 0..2 {
        let response = app.post_raw(path, ACCOUNT_KEY, body).await;
        assert_eq!(response.status(), 201, "{content_type}");
    }
    // Keys out of shape are refused, naming the header, and make nothing.
    let before = jobs_held(&app).await;
    let bad = post_keyed(&app, path, content_type, body, &"k".repeat(300)).await;
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(bad.2.contains("Idempotency-Key"), "{}", bad.2);
    assert_eq!(jobs_held(&app).await, before);
}

/// The api dies after making the job and before keeping its answer; the retry comes after the key's
/// lease: the request runs again, and the create finds the job it made by the id derived from the
/// key. A retry while the first request is still in flight gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_was_never_kept_still_makes_one_job() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let body =
        json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}).to_string();
    let first = post_keyed(&app, "/v1/jobs", "application/json", &body, "lost-1").await;
    assert_eq!(first.0, 201, "{first:?}");
    let made: Value = serde_json::from_str(&first.2).unwrap();

    // What a crash leaves: the job, and no answer kept (the lease ran out).
    let (mut redis, kept) = env.raw_keys("idem:*").await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    let () = redis::cmd("DEL")
        .arg(&kept)
        .query_async(&mut redis)
        .await
        .unwrap();
    let request = spot_shared::store::IdempotentRequest::new(
        "acme",
        "lost-1",
        "POST",
        "/v1/jobs",
        "",
        body.as_bytes(),
    );
    let held = store
        .begin_idempotent(&request, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(held, spot_shared::store::Begun::New);
    let in_flight = post_keyed(&app, "/v1/jobs", "application/json", &body, "lost-1").await;
    assert_eq!(in_flight.0, 409, "{in_flight:?}");
    store.abandon_idempotent(&request).await.unwrap();

    let again = post_keyed(&app, "/v1/jobs", "application/json", &body, "lost-1").await;
    assert_eq!(again.0, 201, "{again:?}");
    let answered: Value = serde_json::from_str(&again.2).unwrap();
    assert_eq!(answered["id"], made["id"], "the same job");
    assert_eq!(jobs_held(&app).await, 1);
}

/// A run-now whose answer was never kept (the api died past its key's lease) and that is sent again
/// with its key fires at the first sending's instant, so it makes one run; on minion's surface too.
/// Without a key, two sendings are two run-nows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_now_sent_again_past_its_keys_lease_still_runs_once() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let job = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "0 0 1 1 *", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let path = format!("/v1/jobs/{job}/run");
    let forget_kept_answers = || async {
        let (mut redis, kept) = env.raw_keys("idem:*").await;
        if !kept.is_empty() {
            let () = redis::cmd("DEL")
                .arg(&kept)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    };
    let first = post_keyed(&app, &path, "application/json", "", "now-1").await;
    assert_eq!(first.0, 202, "{first:?}");
    forget_kept_answers().await;
    let again = post_keyed(&app, &path, "application/json", "", "now-1").await;
    assert_eq!(again.0, 202, "{again:?}");
    assert!(!again.1, "answered anew, not replayed: {again:?}");
    let instant =
        |answer: &str| serde_json::from_str::<Value>(answer).unwrap()["scheduled_at"].clone();
    assert_eq!(instant(&first.2), instant(&again.2), "the same instant");

    let unkeyed = app.post_raw(&path, ACCOUNT_KEY, "").await;
    assert_eq!(unkeyed.status(), 202);

    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let runs = eventually(Duration::from_secs(30), "the run-nows to run", || async {
        let runs = app.runs(&job).await;
        (runs.len() >= 2).then_some(runs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.runs(&job).await.len(),
        2,
        "one for the keyed run-now, one unkeyed: {runs:?}"
    );
}

/// A batch sent again with its `Idempotency-Key` makes no second job: the kept answer comes back,
/// and with the answer gone (an api that died before keeping it) the jobs' ids, derived from the
/// key and each job's place, name the jobs made the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_with_its_key_creates_nothing_twice() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let batch = json!({"jobs": [{"schedule": "*/5 * * * *", "runner": {"type": "dummy", "template": "a"}}, {"schedule": "0 * * * *", "runner": {"type": "dummy", "template": "b"}}]});
    let send = || async {
        let response = app
            .client
            .post(app.url("/v1/jobs:batch"))
            .header("X-Auth-Token", ACCOUNT_KEY)
            .header("Idempotency-Key", "batch-1")
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.unwrap()
    };
    let first = send().await;
    let ids = |reply: &serde_json::Value| -> Vec<String> {
        reply["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["job"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&send().await), ids(&first));
    // The kept answer lost: the request runs again and finds the jobs it made.
    let (mut conn, keys) = env.raw_keys("idem*").await;
    assert!(
        !keys.is_empty(),
        "the answer was kept under an idempotency key"
    );
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(ids(&send().await), ids(&first));
    assert_eq!(store.count_jobs("acme").await.unwrap(), 2);
}

/// A batch of a thousand container jobs passes one job's body limit (256 KiB) and is taken whole,
/// with an idempotency key or without.
#[tokio::test]
async fn a_batch_of_container_jobs_may_pass_one_jobs_body_limit() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let job = |i: usize| {
        json!({"name": format!("nightly-{i}"), "schedule": "0 3 * * *", "runner": {
            "type": "container", "image": "busybox:local", "cmd": "sh -c 'echo hello'",
            "env": ["A=1", "B=2", "LONG=".to_string() + &"x".repeat(120)]}})
    };
    for (key, first) in [(None, 0), (Some("big-batch"), 1000)] {
        let batch = json!({"jobs": (first..first + 1000).map(job).collect::<Vec<_>>()});
        let body = serde_json::to_vec(&batch).unwrap();
        assert!(body.len() > 256 * 1024, "{} bytes", body.len());
        let mut request = app
            .client
            .post(app.url("/v1/jobs:batch"))
            .header("X-Auth-Token", ACCOUNT_KEY)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "key {key:?}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["created"], 1000, "key {key:?}");
    }
    assert_eq!(store.count_jobs("acme").await.unwrap(), 2000);
}
