//! Notifications (`policies.notify`, `auth.accounts[].notify`): webhooks told of a run's events,
//! signed with the account's secret, retried with backoff, at least once with an id to dedupe on,
//! every attempt kept on the run; noted in the same step as the event, so a notifier that dies
//! holding them or one that was not running loses none; bad targets refused at save.

use std::time::Duration;

use serde_json::{json, Value};
use spot_shared::model::RunState;
use spot_tests::image::busybox_image;
use spot_tests::webhook_receiver::{Received, WebhookReceiver};
use spot_tests::*;

/// Settings that retry at once and hold a notification 2 s, so tests do not wait minutes.
fn quick_retries(env: &mut TestEnv) {
    env.settings.notify.backoff_secs = 1;
    env.settings.notify.backoff_max_secs = 1;
    env.settings.notify.lease_secs = 2;
    env.settings.notify.poll_interval_ms = 100;
}

fn assert_signed(request: &Received) {
    let expected = spot_shared::notify::signature(NOTIFY_SECRET.as_bytes(), &request.body);
    assert_eq!(
        request.header("X-Spot-Signature"),
        Some(expected.as_str()),
        "{request:?}"
    );
}

fn events_at(received: &[Received], path: &str) -> Vec<(String, u16)> {
    received
        .iter()
        .filter(|r| r.path == path)
        .map(|r| {
            (
                r.header("X-Spot-Event").unwrap_or("").to_string(),
                r.answered,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_container_is_told_signed_retried_once_per_event_and_kept_on_its_run() {
    let mut env = TestEnv::new();
    quick_retries(&mut env);
    // The first request (the `started` of /hook) is answered 500, so it is tried again.
    let receiver = WebhookReceiver::start(&[500]);
    let app = spawn_app(&env).await;
    let image = busybox_image().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let hook = format!("{}/hook", receiver.address);
    let slack = format!("{}/slack", receiver.address);
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"name": "nightly-report", "schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'exit 3'"},
                "policies": {"retries": {"max_attempts": 1}, "pause_after_failures": 1,
                    "notify": [
                        {"url": hook, "events": ["started", "succeeded", "failed", "paused"]},
                        {"url": slack, "events": ["failed"], "format": "slack"}]}}),
        )
        .await;
    app.run_now(&job_id).await;

    let received = eventually(
        Duration::from_secs(90),
        "started (twice), failed and paused at /hook, failed at /slack",
        || async {
            let received = receiver.received();
            let hook = events_at(&received, "/hook");
            let done = hook.contains(&("started".into(), 200))
                && hook.contains(&("failed".into(), 200))
                && hook.contains(&("paused".into(), 200))
                && !events_at(&received, "/slack").is_empty();
            done.then_some(received)
        },
    )
    .await;
    let run = app.runs(&job_id).await.remove(0);
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["state"], "failed");

    for request in &received {
        assert_signed(request);
        let event = request.header("X-Spot-Event").unwrap();
        assert_eq!(
            request.header("X-Spot-Delivery"),
            Some(format!("{run_id}.{event}").as_str()),
            "one id per event, the same on every attempt and target"
        );
    }
    let mut hook_events = events_at(&received, "/hook");
    hook_events.sort();
    assert_eq!(
        hook_events,
        [
            ("failed".to_string(), 200),
            ("paused".to_string(), 200),
            ("started".to_string(), 200),
            ("started".to_string(), 500),
        ],
        "succeeded never happened; started retried after its 500"
    );
    let failed = received
        .iter()
        .find(|r| r.path == "/hook" && r.header("X-Spot-Event") == Some("failed"))
        .unwrap()
        .json();
    assert_eq!(failed["id"], format!("{run_id}.failed"));
    assert_eq!(failed["run"]["exit_code"], 3);
    assert_eq!(failed["job"]["name"], "nightly-report");
    assert_eq!(failed["account"], "acme");
    let paused = received
        .iter()
        .find(|r| r.header("X-Spot-Event") == Some("paused"))
        .unwrap()
        .json();
    assert!(paused["job"]["paused"]["note"].is_string(), "{paused}");
    let slack: Vec<Value> = received
        .iter()
        .filter(|r| r.path == "/slack")
        .map(Received::json)
        .collect();
    assert_eq!(slack.len(), 1);
    assert_eq!(
        slack[0].as_object().unwrap().len(),
        1,
        "a Slack body is text alone"
    );
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains("nightly-report") && text.contains("exit code 3"),
        "{text}"
    );

    // Every attempt is on the run, without the targets' URLs.
    let shown: Value = app
        .get(&format!("/v1/runs/{run_id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    let attempts = shown["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let outcomes: Vec<(String, String, Value)> = attempts
        .iter()
        .filter(|a| a["event"] == "started")
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_string(),
                a["attempt"].to_string(),
                a["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("will_retry".to_string(), "1".to_string(), json!(500)),
            ("delivered".to_string(), "2".to_string(), json!(200)),
        ]
    );
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    assert!(!shown.to_string().contains("/hook"), "{shown}");

    // `spotctl notifications RUN` shows the same, as a table.
    let table = spotctl_output(&env, &app, ACCOUNT_KEY, &["notifications", &run_id]).await;
    assert!(
        table.contains("EVENT") && table.contains("will_retry") && table.contains("127.0.0.1"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 1 + 5, "{table}");
    let store = env.store().await;
    assert_eq!(store.notifications_outstanding().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_outlive_a_notifier_that_died_holding_them_and_one_that_was_not_running() {
    let mut env = TestEnv::new();
    quick_retries(&mut env);
    let receiver = WebhookReceiver::start(&[]);
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "hi"},
                "policies": {"notify": [{"url": format!("{}/done", receiver.address),
                    "events": ["started", "succeeded"]}]}}),
        )
        .await;
    // No reaper runs: the events wait in Redis.
    app.run_now(&job_id).await;
    let run = eventually(Duration::from_secs(30), "the run done", || async {
        app.runs(&job_id)
            .await
            .into_iter()
            .find(|run| run["state"] == "succeeded")
    })
    .await;
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(store.notifications_outstanding().await.unwrap(), 2);

    // The ending reported again (a redelivered message, a second agent report) notes nothing more.
    let moved = store
        .advance_run(&run_id, RunState::Succeeded, &[])
        .await
        .unwrap();
    assert_eq!(moved, spot_shared::store::Moved::AlreadyThere);
    assert_eq!(store.notifications_outstanding().await.unwrap(), 2);

    // A notifier takes them and dies before delivering: they are held for its lease, then another
    // delivers them.
    let now = chrono::Utc::now();
    let held = store
        .take_due_notifications(now, now + chrono::Duration::seconds(2), 100)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    let notifier = reaper.notifier();
    assert_eq!(notifier.deliver_due().await.unwrap().taken, 0, "still held");
    assert!(receiver.received().is_empty());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let report = notifier.deliver_due().await.unwrap();
    assert_eq!((report.taken, report.delivered), (2, 2), "{report:?}");
    assert_eq!(
        notifier.deliver_due().await.unwrap().taken,
        0,
        "delivered once"
    );
    assert_eq!(store.notifications_outstanding().await.unwrap(), 0);
    let mut events: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("X-Spot-Event").unwrap().to_string())
        .collect();
    events.sort();
    assert_eq!(events, ["started", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn account_defaults_reach_every_job_hopeless_answers_give_up_and_bad_targets_are_refused() {
    let mut env = TestEnv::new();
    quick_retries(&mut env);
    let everything = WebhookReceiver::start(&[]);
    let gone = WebhookReceiver::start(&[404]);
    env.settings.auth.accounts[0].notify = vec![spot_shared::model::NotifyTarget {
        url: format!("{}/all", everything.address),
        events: vec![spot_shared::model::NotifyEvent::Succeeded],
        format: Default::default(),
    }];
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    let store = env.store().await;

    // A job that names no target: the account's default still hears of it; a target answering 404
    // is given up at once.
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "hi"},
                "policies": {"notify": [{"url": format!("{}/gone", gone.address), "events": ["succeeded"]}]}}),
        )
        .await;
    app.run_now(&job_id).await;
    eventually(Duration::from_secs(30), "the event noted", || async {
        (store.notifications_outstanding().await.unwrap() == 1).then_some(())
    })
    .await;
    let report = reaper.notifier().deliver_due().await.unwrap();
    assert_eq!((report.delivered, report.gave_up), (1, 1), "{report:?}");
    assert_eq!(store.notifications_outstanding().await.unwrap(), 0);
    assert_eq!(everything.received().len(), 1);
    assert_eq!(gone.received().len(), 1, "a 404 is not tried again");
    let run = app.runs(&job_id).await.remove(0);
    let outcomes: Vec<&str> = run["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.contains(&"gave_up") && outcomes.contains(&"delivered"));

    // Refused at save, with the field named; nothing made.
    let before = app
        .get("/v1/jobs", ACCOUNT_KEY)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let runner = json!({"type": "dummy", "template": "x"});
    for (key, notify, field) in [
        (
            OTHER_ACCOUNT_KEY,
            json!([{"url": "https://example.com/h", "events": ["failed"]}]),
            "policies.notify",
        ),
        (
            ACCOUNT_KEY,
            json!([{"url": "ftp://example.com/h", "events": ["failed"]}]),
            "policies.notify[0].url",
        ),
        (
            ACCOUNT_KEY,
            json!([{"url": "https://example.com/h", "events": []}]),
            "policies.notify[0].events",
        ),
        (
            ACCOUNT_KEY,
            json!([{"url": "http://169.254.169.254/latest", "events": ["failed"]}]),
            "policies.notify[0].url",
        ),
    ] {
        let response = app
            .send(
                reqwest::Method::POST,
                "/v1/jobs",
                key,
                Some(json!({"schedule": "@yearly", "runner": runner, "policies": {"notify": notify}})),
            )
            .await;
        assert_eq!(response.status(), 400, "{notify}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["field"], field, "{body}");
    }
    let unknown_event = app
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            ACCOUNT_KEY,
            Some(json!({"schedule": "@yearly", "runner": runner,
                "policies": {"notify": [{"url": "https://example.com/h", "events": ["exploded"]}]}})),
        )
        .await;
    assert_eq!(unknown_event.status(), 400);
    let after = app
        .get("/v1/jobs", ACCOUNT_KEY)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(before, after, "nothing made");
}
