//! HRM's tasks API (seed 001): form-encoded tasks whose action is a real HTTP call to a local worker,
//! held until done, then the callback; errors in HRM's shape; outbound targets checked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use spot_tests::*;

/// The `X-Spot-*` headers of one call, sorted by name.
type Identity = Vec<(String, String)>;

/// A worker: `/work` answers after a second, `/fail` with 500, `/slow` after a minute, `/done` records.
struct Worker {
    address: String,
    calls: Arc<Mutex<Vec<String>>>,
    /// The `X-Spot-*` headers of each call, in order.
    identities: Arc<Mutex<Vec<Identity>>>,
    server: actix_web::dev::ServerHandle,
}

async fn spawn_worker() -> Worker {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let identities = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let identified = identities.clone();
    let server = HttpServer::new(move || {
        let recorded = recorded.clone();
        let identified = identified.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let recorded = recorded.clone();
            let identified = identified.clone();
            async move {
                recorded.lock().unwrap().push(req.uri().to_string());
                let mut identity: Identity = req
                    .headers()
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with("x-spot-"))
                    .map(|(name, value)| {
                        (
                            name.as_str().to_string(),
                            value.to_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                identity.sort();
                identified.lock().unwrap().push(identity);
                match req.path() {
                    "/work" => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        HttpResponse::Ok().body("worked")
                    }
                    "/fail" => HttpResponse::InternalServerError().body("boom"),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        HttpResponse::Ok().finish()
                    }
                    _ => HttpResponse::Ok().finish(),
                }
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let address = format!("http://127.0.0.1:{}", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Worker {
        address,
        calls,
        identities,
        server: handle,
    }
}

async fn post_form(app: &TestApp, form: &str) -> (u16, String) {
    let response = app
        .client
        .post(app.url("/tasks"))
        .header("X-Auth-Token", ACCOUNT_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn task(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/tasks/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap()
}

async fn settled(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(30), "the task to settle", || async {
        let task = task(app, id).await;
        (task["status"] != "pending"
            && (task["callback_url"].is_null() || !task["callback_status"].is_null()))
        .then_some(task)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_calls_its_action_then_its_callback() {
    let env = TestEnv::new();
    let worker = spawn_worker().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let form = format!(
        "action_url={}/work%3Fjob%3D7&callback_url={}/done&access_key_id=AKIDEXAMPLE&access_key_secret=SECRETEXAMPLE&timeout=600",
        worker.address, worker.address
    );
    let (status, id) = post_form(&app, &form).await;
    assert_eq!(status, 200, "{id}");
    assert_eq!(id.len(), 32, "the bare id: {id}");

    let pending = task(&app, &id).await;
    assert!(pending["started_at"].as_str().unwrap().ends_with(" GMT"));
    assert_eq!(pending["timeout"], 600);
    let status: Value = app.get("/status", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(status["controlled_instances"], json!([]));
    assert!(status["pending_tasks"].get(&id).is_some(), "{status}");

    let done = settled(&app, &id).await;
    assert_eq!(done["status"], "complete");
    assert_eq!(done["meta"], "[200] worked");
    assert_eq!(done["callback_status"], "complete");
    assert!(done["completed_at"].as_str().unwrap().ends_with(" GMT"));
    // Access keys are accepted, never echoed, never stored.
    assert!(done["access_key_id"].is_null());
    let stored = env.store().await.get_job(&id).await.unwrap().unwrap();
    let stored = serde_json::to_string(&stored).unwrap();
    assert!(!stored.contains("AKIDEXAMPLE") && !stored.contains("SECRETEXAMPLE"));

    let calls = worker.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            format!("/work?job=7&hrm_task_id={id}"),
            format!("/done?hrm_task_id={id}")
        ]
    );
    // The action and the callback are told which fire they serve.
    let run = app.runs(&id).await[0].clone();
    let told = worker.identities.lock().unwrap().clone();
    let expected: Identity = vec![
        ("x-spot-attempt".into(), "1".into()),
        ("x-spot-job-id".into(), id.clone()),
        (
            "x-spot-run-id".into(),
            run["id"].as_str().unwrap().to_string(),
        ),
        (
            "x-spot-scheduled-at".into(),
            chrono::DateTime::parse_from_rfc3339(run["scheduled_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ];
    assert_eq!(told, vec![expected.clone(), expected]);
    let status: Value = app.get("/status", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(status["pending_tasks"], json!({}));

    // meta can be updated, and the task deleted.
    let response = app
        .client
        .put(app.url(&format!("/tasks/{id}")))
        .header("X-Auth-Token", ACCOUNT_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("meta=50%25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(task(&app, &id).await["meta"], "50%");
    let response = app
        .send(
            reqwest::Method::DELETE,
            &format!("/tasks/{id}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get(&format!("/tasks/{id}"), ACCOUNT_KEY).await.status(),
        404
    );
    assert_eq!(
        app.send(
            reqwest::Method::DELETE,
            &format!("/tasks/{id}"),
            ACCOUNT_KEY,
            None
        )
        .await
        .status(),
        404
    );
    provisioner.stop().await;
    worker.server.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_and_timeouts_are_reported() {
    let env = TestEnv::new();
    let worker = spawn_worker().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let (_, failing) = post_form(&app, &format!("action_url={}/fail", worker.address)).await;
    // JSON is accepted too.
    let body =
        json!({"action_url": format!("{}/slow", worker.address), "timeout": "1"}).to_string();
    let slow = app
        .post_raw("/tasks", ACCOUNT_KEY, &body)
        .await
        .text()
        .await
        .unwrap();
    let failed = settled(&app, &failing).await;
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["meta"], "[500] boom");
    let timed_out = settled(&app, &slow).await;
    assert_eq!(timed_out["status"], "timeout");
    provisioner.stop().await;
    worker.server.stop(false).await;
}

#[tokio::test]
async fn bad_tasks_get_hrms_errors() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    for (form, expected) in [
        (
            "callback_url=http://example.com/done",
            json!({"errors": {"action_url": "undefined"}}),
        ),
        (
            "action_url=not-a-url",
            json!({"errors": {"action_url": "malformed_url"}}),
        ),
        (
            "action_url=http://example.com/x&callback_url=::",
            json!({"errors": {"callback_url": "malformed_url"}}),
        ),
        (
            "action_url=http://example.com/x&timeout=soon",
            json!({"errors": {"timeout": "malformed"}}),
        ),
        (
            "action_url=http://{private_dns_name}/run&instance_id=i-123",
            json!({"errors": {"access_key_id": "undefined"}}),
        ),
    ] {
        let (status, body) = post_form(&app, form).await;
        assert_eq!(status, 400, "{form}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            expected,
            "{form}"
        );
    }
    assert_eq!(
        app.get("/tasks/nosuchtask", ACCOUNT_KEY).await.status(),
        404
    );
    let response = app
        .client
        .post(app.url("/tasks"))
        .body("action_url=http://example.com/x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_and_loopback_targets_are_refused_unless_allowed() {
    let env = TestEnv::new();
    let worker = spawn_worker().await;
    let port = worker.address.rsplit(':').next().unwrap().to_string();
    let mut strict = env.settings.clone();
    strict.outbound.allow_loopback = false;

    // At the door: an address, a name that resolves to loopback, IPv4 wrapped in IPv6, the
    // metadata services of EC2 (IPv4 and IPv6) and Alibaba: 400 naming the field.
    let strict_app = spawn_app_with(strict.clone()).await;
    for url in [
        format!("{}/work", worker.address),
        format!("http://localhost:{port}/work"),
        format!("http://[::ffff:127.0.0.1]:{port}/work"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        "http://100.100.100.200/latest/meta-data/".to_string(),
        // Spellings the submit-time check once let through (SECURITY.md lists every one tried).
        format!("http://localhost.:{port}/work"),
        format!("http://LocalHost..:{port}/work"),
        format!("http://api.localhost:{port}/work"),
        format!("http://[::ffff:0:7f00:1]:{port}/work"),
        format!("http://[64:ff9b:1::7f00:1]:{port}/work"),
        format!("http://[2002:7f00:1::]:{port}/work"),
        format!("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/work"),
        format!("http://2130706433:{port}/work"),
        format!("http://0x7f.1:{port}/work"),
        format!("http://0177.0.0.1:{port}/work"),
        "http://metadata.google.internal/computeMetadata/v1/".to_string(),
        "http://metadata.google.internal./computeMetadata/v1/".to_string(),
        "http://metadata/computeMetadata/v1/".to_string(),
        "http://instance-data.ec2.internal/latest/meta-data/".to_string(),
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/".to_string(),
        "http://[::ffff:0:a9fe:a9fe]/latest/meta-data/".to_string(),
    ] {
        let (status, body) = post_form(&strict_app, &format!("action_url={url}")).await;
        assert_eq!(status, 400, "{url}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["errors"]["action_url"]
                .as_str()
                .is_some_and(|m| m.contains("not an allowed target")),
            "{url}: {body}"
        );
    }

    // At call time: accepted by an api that allowed loopback when it was submitted, refused by the
    // provisioner that calls it now, on the address it would connect to.
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner_with(strict, &app.address).await;
    let (_, loopback) = post_form(&app, &format!("action_url={}/work", worker.address)).await;
    let task = settled(&app, &loopback).await;
    assert_eq!(task["status"], "error", "{task}");
    assert!(
        task["meta"]
            .as_str()
            .unwrap()
            .contains("not an allowed target"),
        "{task}"
    );
    assert!(
        worker.calls.lock().unwrap().is_empty(),
        "the worker on loopback was never called"
    );
    provisioner.stop().await;
    worker.server.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tasks_instance_is_started_named_and_stopped_when_idle() {
    let moto = Moto::start().await;
    let mut env = TestEnv::new();
    env.settings.ec2.endpoint_url = moto.endpoint.clone();
    let ec2 = moto.ec2().await;
    let stopped = moto.instance("acme", true).await;
    let running = moto.instance("acme", false).await;
    let theirs = moto.instance("globex", true).await;
    let worker = spawn_worker().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let keys = "access_key_id=AKIDEXAMPLE&access_key_secret=SECRETEXAMPLE";

    for (instance, reason) in [
        ("i-0000000000000dead", "not_found"),
        (theirs.as_str(), "forbidden"),
    ] {
        let (status, body) = post_form(
            &app,
            &format!("action_url=http://{{dns_name}}/x&instance_id={instance}&{keys}"),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"errors": {"instance_id": reason}})
        );
    }

    let form = format!(
        "action_url={}/work%3Fhost%3D%7Bprivate_dns_name%7D&instance_id={stopped}&{keys}",
        worker.address
    );
    let (status, id) = post_form(&app, &form).await;
    assert_eq!(status, 200, "{id}");
    eventually(
        Duration::from_secs(30),
        "the instance under control",
        || async {
            let status: Value = app.get("/status", ACCOUNT_KEY).await.json().await.unwrap();
            (status["controlled_instances"] == json!([stopped])
                && status["pending_tasks"][&id] == json!(stopped))
            .then_some(())
        },
    )
    .await;
    let done = settled(&app, &id).await;
    assert_eq!(done["status"], "complete", "{done}");
    let calls = worker.calls.lock().unwrap().clone();
    let host = calls[0]
        .strip_prefix("/work?host=")
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !host.is_empty() && !host.contains('{'),
        "the private DNS name was filled in: {calls:?}"
    );
    assert_eq!(
        ec2.describe(&stopped)
            .await
            .unwrap()
            .unwrap()
            .private_dns_name
            .as_deref(),
        Some(host.as_str())
    );
    // Idle again: the instance it started is stopped, and no longer controlled.
    eventually(
        Duration::from_secs(30),
        "the instance to be stopped",
        || async {
            let state = ec2.describe(&stopped).await.unwrap().unwrap().state;
            let status: Value = app.get("/status", ACCOUNT_KEY).await.json().await.unwrap();
            (matches!(state.as_str(), "stopped" | "stopping")
                && status["controlled_instances"] == json!([]))
            .then_some(())
        },
    )
    .await;

    // An instance that was running already is used and left running.
    let form = format!(
        "action_url={}/work&instance_id={running}&{keys}",
        worker.address
    );
    let (_, id) = post_form(&app, &form).await;
    assert_eq!(settled(&app, &id).await["status"], "complete");
    assert_eq!(
        ec2.describe(&running).await.unwrap().unwrap().state,
        "running"
    );
    provisioner.stop().await;
    worker.server.stop(false).await;
}

/// The provisioner holding a task dies (kill -9): the task's heartbeats stop, and the reaper's sweep
/// calls the action again (`tests/sweeps.rs`) until its relaunches run out (none here): then it ends
/// `error` and the instance it started is stopped, since no live task needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_whose_provisioner_died_ends_and_its_instance_is_stopped() {
    let moto = Moto::start().await;
    let mut env = TestEnv::new();
    env.settings.ec2.endpoint_url = moto.endpoint.clone();
    env.overrides
        .push(("SPOT__EC2__ENDPOINT_URL".into(), moto.endpoint.clone()));
    let ec2 = moto.ec2().await;
    let stopped = moto.instance("acme", true).await;
    let worker = spawn_worker().await;
    let app = spawn_app(&env).await;
    env.overrides
        .push(("SPOT__API__PUBLIC_URL".into(), app.address.clone()));
    let provisioner = spot_tests::ServiceProcess::start(&env, "spot-provisioner", &[]);
    let keys = "access_key_id=AKIDEXAMPLE&access_key_secret=SECRETEXAMPLE";
    let form = format!(
        "action_url={}/slow&instance_id={stopped}&timeout=600&{keys}",
        worker.address
    );
    let (status, id) = post_form(&app, &form).await;
    assert_eq!(status, 200, "{id}");
    eventually(Duration::from_secs(30), "the action to be held", || async {
        let calls = worker.calls.lock().unwrap().clone();
        calls.iter().any(|c| c.starts_with("/slow")).then_some(())
    })
    .await;
    provisioner.kill();

    let mut settings = env.settings.clone();
    settings.reaper.heartbeat_timeout_secs = 1;
    settings.provisioner.max_relaunches = 0;
    let reaper = spot_reaper::Reaper::build(settings).await.unwrap();
    eventually(Duration::from_secs(30), "the sweep to end it", || async {
        (reaper.sweep_once().await.ok()?.provision_failed == 1).then_some(())
    })
    .await;
    let ended = task(&app, &id).await;
    assert_eq!(ended["status"], "error", "{ended}");
    let state = ec2.describe(&stopped).await.unwrap().unwrap().state;
    assert!(matches!(state.as_str(), "stopped" | "stopping"), "{state}");
    let status: Value = app.get("/status", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(status["controlled_instances"], json!([]), "{status}");
    worker.server.stop(false).await;
}
