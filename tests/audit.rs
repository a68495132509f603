//! The audit log: every state-changing request on every surface kept per account, with the key's
//! fingerprint (never the key), the surface and the specification's diff; `GET /v1/audit` paged and
//! filtered by job and time; other accounts see none of it; entries past the retention go.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use spot_tests::*;

async fn audit(app: &TestApp, key: &str, query: &str) -> (u16, Value) {
    let response = app.get(&format!("/v1/audit{query}"), key).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ok(app: &TestApp, method: Method, path: &str, body: Option<Value>) {
    let response = app.send(method, path, ACCOUNT_KEY, body).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

fn actions(page: &Value) -> Vec<(String, String)> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["surface"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_change_on_every_surface_is_kept_with_its_key_surface_and_diff() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let started = chrono::Utc::now();

    // /v1: create, edit, disable, enable, pause, resume, run now, backfill, delete.
    let body = json!({"name": "report", "schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}});
    let id = app.create_job(ACCOUNT_KEY, body.clone()).await;
    let path = format!("/v1/jobs/{id}");
    let mut edited = body.clone();
    edited["schedule"] = json!("*/30 * * * *");
    edited["policies"] = json!({"timeout_secs": 60});
    ok(&app, Method::PUT, &path, Some(edited)).await;
    for action in ["disable", "enable"] {
        ok(&app, Method::POST, &format!("{path}/{action}"), None).await;
    }
    ok(
        &app,
        Method::POST,
        &format!("{path}/pause"),
        Some(json!({"note": "db down"})),
    )
    .await;
    ok(&app, Method::POST, &format!("{path}/resume"), None).await;
    let response = app
        .send(Method::POST, &format!("{path}/run"), ACCOUNT_KEY, None)
        .await;
    assert_eq!(response.status(), 202);
    let from = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    let to = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    ok(
        &app,
        Method::POST,
        &format!("{path}/backfill"),
        Some(json!({"from": from, "to": to})),
    )
    .await;
    ok(&app, Method::DELETE, &path, None).await;

    // Seed 003's /schedule and minion's surface.
    let response = app
        .post_raw(
            "/schedule",
            ACCOUNT_KEY,
            r#"{"schedule": "2099-11-22T19:39:22Z", "docker_image": "alpine:latest", "cmd": "true"}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let minion = app
        .client
        .post(app.url("/v1/minion/acme/jobs/space-xy"))
        .header("X-Auth-Token", ACCOUNT_KEY)
        .json(
            &json!({"job": {"details": {"runner": "dummyRunner"}, "group": "space-xy",
            "name": "spin", "schedule_expression": "* * * ? *", "enabled": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(minion.status(), 200);

    // Written off the request path, within moments.
    let page = eventually(Duration::from_secs(10), "every entry written", || async {
        let (status, page) = audit(&app, ACCOUNT_KEY, "").await;
        assert_eq!(status, 200, "{page}");
        (page["entries"].as_array().map_or(0, Vec::len) == 11).then_some(page)
    })
    .await;
    let seen = actions(&page);
    let expected: Vec<(String, String)> = [
        ("create", "minion"),
        ("create", "simple"),
        ("delete", "v1"),
        ("backfill", "v1"),
        ("run_now", "v1"),
        ("resume", "v1"),
        ("pause", "v1"),
        ("enable", "v1"),
        ("disable", "v1"),
        ("edit", "v1"),
        ("create", "v1"),
    ]
    .iter()
    .map(|(a, s)| (a.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, expected, "newest first");

    let fingerprint = format!("key-{}", &hex::encode(Sha256::digest(ACCOUNT_KEY))[..12]);
    let entries = page["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["key"] == fingerprint.as_str()
        && e["account"] == "acme"
        && e["admin"] == false));
    assert!(
        !page.to_string().contains(ACCOUNT_KEY),
        "the key is never kept"
    );
    let edit = entries.iter().find(|e| e["action"] == "edit").unwrap();
    assert_eq!(
        edit["changes"],
        json!({"schedule": {"from": "@hourly", "to": "*/30 * * * *"},
               "policies.timeout_secs": {"from": 1800, "to": 60}}),
        "the diff names each field changed and nothing else"
    );
    let create = entries.iter().rfind(|e| e["action"] == "create").unwrap();
    assert!(
        create["changes"].is_null(),
        "a create's spec is the job's: {create}"
    );
    let paused = entries.iter().find(|e| e["action"] == "pause").unwrap();
    assert_eq!(paused["changes"]["paused"]["to"]["note"], "db down");
    let backfill = entries.iter().find(|e| e["action"] == "backfill").unwrap();
    assert!(backfill["detail"]["runs"].as_u64() >= Some(3), "{backfill}");
    assert!(
        entries.iter().find(|e| e["action"] == "run_now").unwrap()["detail"]["instant"].is_string()
    );

    // One job's entries, also once it is deleted; pages; a time window.
    let (_, of_job) = audit(&app, ACCOUNT_KEY, &format!("?job={id}")).await;
    assert_eq!(of_job["entries"].as_array().unwrap().len(), 9);
    let (_, first) = audit(&app, ACCOUNT_KEY, "?limit=4").await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 4);
    assert_eq!(first["next_offset"], 4);
    let (_, rest) = audit(&app, ACCOUNT_KEY, "?limit=100&offset=4").await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 7);
    assert!(rest["next_offset"].is_null());
    let before_start = (started - chrono::Duration::seconds(5)).to_rfc3339();
    let (_, none) = audit(
        &app,
        ACCOUNT_KEY,
        &format!("?to={}", before_start.replace('+', "%2B")),
    )
    .await;
    assert_eq!(none["entries"], json!([]));

    // Bad filters are 400s naming them; another account sees nothing of it.
    let (status, refused) = audit(
        &app,
        ACCOUNT_KEY,
        "?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
    )
    .await;
    assert_eq!((status, refused["field"].clone()), (400, json!("to")));
    let (status, refused) = audit(&app, ACCOUNT_KEY, "?job=a:b").await;
    assert_eq!((status, refused["field"].clone()), (400, json!("job")));
    let (status, _) = audit(&app, ACCOUNT_KEY, "?color=red").await;
    assert_eq!(status, 400);
    let (_, theirs) = audit(&app, OTHER_ACCOUNT_KEY, "").await;
    assert_eq!(theirs["entries"], json!([]));
    let (_, theirs) = audit(&app, OTHER_ACCOUNT_KEY, &format!("?job={id}")).await;
    assert_eq!(
        theirs["entries"],
        json!([]),
        "not another account's job either"
    );
    let (status, _) = audit(&app, OTHER_ACCOUNT_KEY, "?account=acme").await;
    assert_eq!(status, 404);

    // `spotctl audit` shows the same.
    let table = spotctl_output(&env, &app, ACCOUNT_KEY, &["audit", "--job", &id]).await;
    assert_eq!(table.lines().count(), 1 + 9, "{table}");
    assert!(
        table.contains("policies.timeout_secs, schedule") && table.contains(&fingerprint),
        "{table}"
    );
}

/// The actions of acme's entries in `window`, newest first, as the store reads them.
async fn actions_kept(
    store: &spot_shared::store::Store,
    window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> Vec<String> {
    let page = store.audit_page("acme", None, window, 0, 100).await;
    page.unwrap().into_iter().map(|e| e.action).collect()
}

#[tokio::test]
async fn entries_older_than_the_retention_or_past_the_most_kept_go() {
    let env = TestEnv::new();
    let store = env.store().await;
    let entry = |days_ago: i64, action: &str| spot_shared::model::AuditEntry {
        id: spot_shared::ids::new_id(),
        at: chrono::Utc::now() - chrono::Duration::days(days_ago),
        account: "acme".into(),
        key: "key-0".into(),
        admin: false,
        surface: "v1".into(),
        action: action.into(),
        job_id: "j1".into(),
        changes: Default::default(),
        detail: None,
    };
    let retention = chrono::Duration::days(90);
    let old = [entry(91, "old"), entry(89, "kept")];
    store.record_audits(&old, retention, 100).await.unwrap();
    store
        .record_audits(&[entry(0, "new")], retention, 100)
        .await
        .unwrap();
    let window = (
        chrono::Utc::now() - chrono::Duration::days(400),
        chrono::Utc::now(),
    );
    let read = actions_kept(&store, window).await;
    assert_eq!(read, ["new", "kept"]);
    let of_job = store
        .audit_page("acme", Some("j1"), window, 0, 100)
        .await
        .unwrap();
    assert_eq!(of_job.len(), 2);
    assert!(store
        .audit_page("globex", None, window, 0, 100)
        .await
        .unwrap()
        .is_empty());

    // The most kept per account: the oldest go first.
    let many: Vec<_> = (0..5).map(|i| entry(10 - i, &format!("e{i}"))).collect();
    store.record_audits(&many, retention, 3).await.unwrap();
    let read = actions_kept(&store, window).await;
    assert_eq!(read, ["new", "e4", "e3"]);
}
