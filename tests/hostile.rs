//! Hostile inputs (issue 17): values at and past every bound are refused at the door naming the field,
//! ids outside the id alphabet find nothing, and a panic in one message's handling costs only that
//! message (dead-lettered with the reason) while the consumer goes on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::broker::serve;
use spot_shared::model::Policies;
use spot_tests::*;

/// The request quoted in the issue: a misfire grace of 10^16 seconds was accepted, and each of its
/// fires then panicked a provisioner task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_policies_are_refused_naming_the_field() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let job = |policies: Value| json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}, "policies": policies});
    for (policies, field) in [
        (
            json!({"misfire_grace_secs": 10_000_000_000_000_000u64}),
            "policies.misfire_grace_secs",
        ),
        (json!({"timeout_secs": 0}), "policies.timeout_secs"),
        (
            json!({"retries": {"max_attempts": 2, "backoff_secs": 100_000}}),
            "policies.retries.backoff_secs",
        ),
        (json!({"history_limit": 0}), "policies.history_limit"),
        (
            json!({"start_at": "-0001-01-01T00:00:00Z"}),
            "policies.start_at",
        ),
    ] {
        let response = app
            .post_raw("/v1/jobs", ACCOUNT_KEY, &job(policies.clone()).to_string())
            .await;
        assert_eq!(response.status(), 400, "{policies}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{policies}: {error}");
    }
    let container = |spec: Value| json!({"schedule": "@hourly", "runner": spec});
    for (runner, field) in [
        (
            json!({"type": "dummy", "template": "x".repeat(70_000)}),
            "template",
        ),
        (
            json!({"type": "container", "image": "busybox", "disk_gb": 100_000}),
            "disk_gb",
        ),
        (
            json!({"type": "container", "image": "Busy/Box:@latest"}),
            "docker_image",
        ),
    ] {
        let response = app
            .post_raw("/v1/jobs", ACCOUNT_KEY, &container(runner).to_string())
            .await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{error}");
    }
    // Nothing was stored.
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(0), "{listed}");
}

/// An id with `:` named another record's key (`job:{id}:runs` is a sorted set): a Redis type error,
/// a 500. Ids outside the alphabet now find nothing, on every surface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_id_alphabet_are_404() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": Utc::now().to_rfc3339(), "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    // With a run, `job:{id}:runs` exists (a sorted set): what `{id}:runs` as a job id would read.
    eventually(Duration::from_secs(10), "the run", || async {
        (!app.runs(&id).await.is_empty()).then_some(())
    })
    .await;
    let odd = format!("{id}:runs");
    for path in [
        format!("/v1/jobs/{odd}"),
        format!("/v1/jobs/{odd}/runs"),
        format!("/v1/runs/{odd}"),
        format!("/v1/instances/{odd}"),
        format!("/status/{odd}"),
        format!("/tasks/{odd}"),
    ] {
        let response = app.send(Method::GET, &path, ACCOUNT_KEY, None).await;
        assert_eq!(response.status(), 404, "{path}");
    }
}

/// A job stored before the bounds existed (written here past the api) still fires: the provisioner
/// reads an impossible grace as none instead of panicking on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_value_past_the_bounds_does_not_panic_the_provisioner() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let store = env.store().await;
    let mut job = store.get_job(&id).await.unwrap().unwrap();
    job.policies = Policies {
        misfire_grace_secs: Some(u64::MAX),
        ..Policies::default()
    };
    job.next_fire_at = Some(Utc::now());
    store.save_job(&job).await.unwrap();
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    eventually(Duration::from_secs(15), "the fire", || async {
        (!app.runs(&id).await.is_empty()).then_some(())
    })
    .await;
}

/// A handler that panics on one message: that message lands in the dead letters with the panic's
/// text, and the consumer goes on to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_message_and_the_consumer_goes_on() {
    let env = TestEnv::new();
    let broker = Arc::new(env.broker().await);
    let queue = broker.topology().fires_queue();
    broker.publish("", &queue, &json!("boom")).await.unwrap();
    broker.publish("", &queue, &json!("fine")).await.unwrap();

    let (handled, mut handled_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut subscription = broker.subscribe(&queue, 4, "hostile-test");
    let consumer = tokio::spawn(async move {
        serve(
            &mut subscription,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(2),
            move |delivery| {
                let handled = handled.clone();
                async move {
                    let body: String = serde_json::from_slice(&delivery.data).unwrap();
                    if body == "boom" {
                        panic!("a value nothing foresaw: {body}");
                    }
                    delivery
                        .ack(lapin::options::BasicAckOptions::default())
                        .await
                        .unwrap();
                    handled.send(body).unwrap();
                }
            },
        )
        .await;
    });
    let first = tokio::time::timeout(Duration::from_secs(10), handled_rx.recv())
        .await
        .expect("the consumer went on past the panic");
    assert_eq!(first.as_deref(), Some("fine"));

    let channel = broker.channel().await.unwrap();
    let dead = broker.topology().dead_letters();
    let letter = eventually(Duration::from_secs(10), "the dead letter", || async {
        channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(letter.data, br#""boom""#);
    let headers = letter.properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        header("x-spot-error").contains("a value nothing foresaw: boom"),
        "{}",
        header("x-spot-error")
    );
    assert_eq!(header("x-spot-queue"), queue);

    let _ = stop.send(());
    consumer.await.unwrap();
    // Nothing left behind unacknowledged: the queue is empty once the consumer has gone.
    eventually(Duration::from_secs(20), "an empty fires queue", || async {
        (env.queue_depth(&queue) == Some(0)).then_some(())
    })
    .await;
}

/// bcrypt-hashed keys: one costlier than allowed is refused without being tried (a cost-12 hash made
/// cheaply at cost 4 and relabelled), and an address whose tokens failed so many times a minute gets
/// 429 without more being tried; plain keys are never held up by either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_tokens_are_bounded_in_cost_and_throttled_per_address() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let relabelled = bcrypt::hash("no such key", 4)
        .unwrap()
        .replacen("$04$", "$12$", 1);
    let response = app.get("/v1/jobs", &relabelled).await;
    assert_eq!(response.status(), 403);

    let limit = env.settings.auth.bcrypt_failures_per_minute as usize;
    // `limit` failures a minute are allowed; the one past them blocks the address.
    let mut statuses = Vec::new();
    for i in 0..limit + 3 {
        let bogus = bcrypt::hash(format!("guess {i}"), 4).unwrap();
        statuses.push(app.get("/v1/jobs", &bogus).await.status().as_u16());
    }
    assert!(statuses[..=limit].iter().all(|s| *s == 403), "{statuses:?}");
    assert!(
        statuses[limit + 1..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // The key itself still gets in.
    assert_eq!(app.get("/v1/jobs", ACCOUNT_KEY).await.status(), 200);
}

/// What a caller learns from the open and the shared routes: no tenant's name in `/metrics`, and
/// the same answer from `/callback` for an instance that does not exist and for a wrong secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_told_about_other_tenants_or_instances() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let metrics = app
        .get("/metrics", OTHER_ACCOUNT_KEY)
        .await
        .text()
        .await
        .unwrap();
    for account in &env.settings.auth.accounts {
        assert!(
            !metrics.contains(&format!("\"{}\"", account.name)),
            "{metrics}"
        );
    }
    assert!(metrics.contains("spot_scheduler_jobs "), "{metrics}");

    // A real instance (a container job's, on the local provider) and one that does not exist.
    let image = spot_tests::image::busybox_image().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": Utc::now().to_rfc3339(), "policies": {"timeout_secs": 10},
                   "runner": {"type": "container", "image": image, "cmd": "sleep 5"}}),
        )
        .await;
    let (run_id, instance_id) = eventually(Duration::from_secs(30), "an instance", || async {
        let run = app.runs(&id).await.into_iter().next()?;
        Some((
            run["id"].as_str()?.to_string(),
            run["instance_id"].as_str()?.to_string(),
        ))
    })
    .await;
    let mut answers = Vec::new();
    for (instance, run) in [
        (instance_id.as_str(), run_id.as_str()),
        ("local-nosuchrun-1", "nosuchrun"),
    ] {
        let body = json!({"action": "update", "instance_id": instance, "run_id": run});
        let response = app
            .client
            .post(app.url("/callback"))
            .header("X-Run-Secret", "a guess")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        answers.push((response.status().as_u16(), response.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, 403, "{answers:?}");
    assert_eq!(answers[0], answers[1]);
}

/// Log follow streams are capped per account: past the cap, 429 naming it; a stream that ends (its
/// run ended) gives its slot back. (A client that leaves early frees its slot at the next write the
/// api attempts, or when the run ends: actix notices a closed connection only when writing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_are_capped_per_account() {
    let mut env = TestEnv::new();
    env.settings.quotas.max_log_streams = 2;
    let app = spawn_app_with(env.settings.clone()).await;
    let image = spot_tests::image::busybox_image().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let mut runs = Vec::new();
    for cmd in [
        "sh -c 'echo started; sleep 4'",
        "sh -c 'echo started; sleep 30'",
    ] {
        let id = app
            .create_job(
                ACCOUNT_KEY,
                json!({"schedule": Utc::now().to_rfc3339(), "policies": {"timeout_secs": 40},
                       "runner": {"type": "container", "image": image, "cmd": cmd}}),
            )
            .await;
        let run_id = eventually(Duration::from_secs(30), "a running run", || async {
            let run = app.runs(&id).await.into_iter().next()?;
            (run["state"] == "running").then(|| run["id"].as_str().unwrap().to_string())
        })
        .await;
        runs.push(format!("/v1/runs/{run_id}/logs?follow=true"));
    }
    let (short, long) = (&runs[0], &runs[1]);
    let mut first = app.get(short, ACCOUNT_KEY).await;
    let second = app.get(short, ACCOUNT_KEY).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = app.get(long, ACCOUNT_KEY).await;
    assert_eq!(third.status(), 429);
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["field"], "quotas.max_log_streams", "{error}");
    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    let counted = "spot_scheduler_quota_refusals_total{quota=\"max_log_streams\"} 1";
    assert!(metrics.contains(counted), "{counted} in {metrics}");
    // The output comes through as it is written, and the stream ends with the run.
    let chunk = tokio::time::timeout(Duration::from_secs(10), first.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&chunk).contains("started"),
        "{chunk:?}"
    );
    let rest = tokio::time::timeout(Duration::from_secs(30), second.text())
        .await
        .expect("the stream ends with its run")
        .unwrap();
    assert!(rest.contains("started"), "{rest:?}");
    drop(first);
    eventually(Duration::from_secs(10), "a slot given back", || async {
        (app.get(long, ACCOUNT_KEY).await.status() == 200).then_some(())
    })
    .await;
}

/// Listings are paged: `limit` at most 1,000, and `next_offset` leads through the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_paged() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let mut created = std::collections::BTreeSet::new();
    for _ in 0..5 {
        created.insert(
            app.create_job(
                ACCOUNT_KEY,
                json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
            )
            .await,
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut offset = Some(0);
    let mut pages = 0;
    while let Some(at) = offset {
        let page: Value = app
            .get(&format!("/v1/jobs?limit=2&offset={at}"), ACCOUNT_KEY)
            .await
            .json()
            .await
            .unwrap();
        for job in page["jobs"].as_array().unwrap() {
            seen.insert(job["id"].as_str().unwrap().to_string());
        }
        offset = page["next_offset"].as_u64().map(|n| n as usize);
        pages += 1;
    }
    assert_eq!((pages, seen), (3, created));
    let huge: Value = app
        .get("/v1/jobs?limit=1000000", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(huge["jobs"].as_array().map(Vec::len), Some(5));
    assert!(huge["next_offset"].is_null());
}

/// The compatibility surfaces keep their seeds' bodies and page by `limit`/`offset`, leading on with
/// `X-Next-Offset` and `Link`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_listings_are_paged_in_headers() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    for n in 0..3 {
        let minion = json!({"job": {"name": format!("m{n}"), "schedule_expression": "0 4 * * *",
            "details": {"runner": "dummyRunner"}}});
        let created = app
            .send(
                reqwest::Method::POST,
                "/v1/minion/acme/jobs/g",
                ACCOUNT_KEY,
                Some(minion),
            )
            .await;
        assert_eq!(created.status(), 200);
        let cronjob = json!({"executable": "true", "schedule": "0 5 * * *", "type": "command"});
        let created = app
            .send(reqwest::Method::POST, "/jobs", ACCOUNT_KEY, Some(cronjob))
            .await;
        assert_eq!(created.status(), 200);
        let at = format!("2030-01-0{}T00:00:00Z", n + 1);
        let operation =
            json!({"operation": "schedule", "payload": {"imageName": "busybox", "dateToRun": at}});
        let created = app
            .send(
                reqwest::Method::POST,
                "/JobScheduler",
                ACCOUNT_KEY,
                Some(operation),
            )
            .await;
        assert_eq!(created.status(), 200);
    }
    // Each listing: (path, how to count its entries).
    let entries = |body: &Value| -> usize {
        body.as_array()
            .or_else(|| body["jobs"].as_array())
            .map(Vec::len)
            .unwrap_or(0)
    };
    for path in [
        "/list",
        "/jobs",
        "/v1/minion/acme/jobs",
        "/v1/minion/acme/jobs/g",
    ] {
        let first = app.get(&format!("{path}?limit=2"), ACCOUNT_KEY).await;
        assert_eq!(first.status(), 200, "{path}");
        // Where the next page starts in the account's index: past the cron jobs /list leaves out.
        let next = first.headers()["x-next-offset"]
            .to_str()
            .unwrap()
            .to_string();
        if path != "/list" {
            assert_eq!(next, "2", "{path}");
        }
        let link = first.headers()["link"].to_str().unwrap().to_string();
        assert_eq!(
            link,
            format!("<{path}?offset={next}&limit=2>; rel=\"next\"")
        );
        assert_eq!(entries(&first.json().await.unwrap()), 2, "{path}");
        let rest = app.get(&format!("{path}?offset={next}"), ACCOUNT_KEY).await;
        assert!(rest.headers().get("x-next-offset").is_none(), "{path}");
        assert!(entries(&rest.json().await.unwrap()) >= 1, "{path}");
        let bad = app.get(&format!("{path}?limit=many"), ACCOUNT_KEY).await;
        assert_eq!(bad.status(), 400, "{path}");
    }
    let list = |payload: Value| {
        app.send(
            reqwest::Method::POST,
            "/JobScheduler",
            ACCOUNT_KEY,
            Some(json!({"operation": "list", "payload": payload})),
        )
    };
    let first = list(json!({"limit": 2})).await;
    assert_eq!(first.headers()["x-next-offset"], "2");
    // The Link leads to a route that answers it: the list as a GET.
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</JobScheduler?offset=2&limit=2>; rel=\"next\"");
    assert_eq!(entries(&first.json().await.unwrap()), 2);
    let followed = app.get("/JobScheduler?offset=2&limit=2", ACCOUNT_KEY).await;
    assert_eq!(followed.status(), 200);
    assert!(followed.headers().get("x-next-offset").is_none());
    assert_eq!(entries(&followed.json().await.unwrap()), 1);
    let rest = list(json!({"limit": 2, "offset": 2})).await;
    assert!(rest.headers().get("x-next-offset").is_none());
    assert_eq!(entries(&rest.json().await.unwrap()), 1);
    let all = list(Value::Null).await;
    assert_eq!(entries(&all.json().await.unwrap()), 3);
}

/// Overwrites the stored record of job `id` with `raw`, past the api (a bug, or a hand in Redis).
async fn overwrite_job_record(env: &TestEnv, id: &str, raw: &str) {
    let (mut conn, keys) = env.raw_keys(&format!(":job:{id}")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(raw)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Poison is isolated, not retried for ever: a job whose stored record cannot be read is set aside
/// with the reason, by the reconciler (a record that is not JSON at all) and by the provisioner (one
/// whose head reads but whose body does not), and is never fired or re-armed again until an admin
/// releases it once its record reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_record_cannot_be_read_is_quarantined_until_released() {
    let mut env = TestEnv::new();
    env.settings.auth.admin_keys = vec![secrecy::SecretString::from("test-admin-key")];
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let body = json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}});
    let garbage = app.create_job(ACCOUNT_KEY, body.clone()).await;
    let truncated = app.create_job(ACCOUNT_KEY, body).await;
    let kept = store.get_job(&truncated).await.unwrap().unwrap();
    // Both due now, so that the reconciler hands them over.
    let due = Utc::now() - chrono::Duration::seconds(60);
    for id in [&garbage, &truncated] {
        let mut job = store.get_job(id).await.unwrap().unwrap();
        job.next_fire_at = Some(due);
        store.save_job(&job).await.unwrap();
    }
    overwrite_job_record(&env, &garbage, "not json at all").await;
    overwrite_job_record(
        &env,
        &truncated,
        r#"{"enabled":true,"generation":1,"schedule":"#,
    )
    .await;

    let mut settings = env.settings.clone();
    settings.provisioner.reconcile_grace_secs = 0;
    let provisioner = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();
    let report = provisioner.reconcile_once().await.unwrap();
    assert_eq!(report.quarantined, 1, "{report:?}");
    // The other's head reads: it is handed over, and its fire finds it unreadable.
    let fire = spot_shared::messages::FireMessage::scheduled(&truncated, 1, due);
    assert_eq!(
        provisioner.handle_fire(&fire).await.unwrap(),
        spot_provisioner::FireOutcome::Quarantined
    );
    // Set aside: the next pass finds nothing of them.
    let again = provisioner.reconcile_once().await.unwrap();
    assert_eq!((again.scheduled, again.quarantined), (0, 0), "{again:?}");

    let listed = app.get("/v1/quarantine", "test-admin-key").await;
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&garbage.as_str()) && ids.contains(&truncated.as_str()));
    assert!(listed["jobs"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("cannot be read"));
    assert_eq!(app.get("/v1/quarantine", ACCOUNT_KEY).await.status(), 403);
    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    assert!(
        metrics.contains("spot_scheduler_jobs_quarantined 2"),
        "{metrics}"
    );

    // Still unreadable: not released.
    let path = format!("/v1/quarantine/{truncated}/release");
    let refused = app.post_raw(&path, "test-admin-key", "").await;
    assert_eq!(refused.status(), 409);
    // Mended, then released: on its schedule again.
    store.save_job(&kept).await.unwrap();
    let released = app.post_raw(&path, "test-admin-key", "").await;
    assert_eq!(released.status(), 200);
    let due = store
        .due_timers(Utc::now() + chrono::Duration::days(1), 100)
        .await
        .unwrap();
    assert!(due.iter().any(|(id, _)| id == &truncated), "{due:?}");
    assert!(!due.iter().any(|(id, _)| id == &garbage), "{due:?}");
}

/// A Redis error that will not clear by trying again (here WRONGTYPE: a key of the wrong type) is a
/// 500 with an error id to quote, not a 503 telling the client to try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_redis_error_is_a_500_with_an_error_id() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let (mut conn, keys) = env.raw_keys(&format!(":job:{id}")).await;
    let runs_key = format!("{}:runs", keys[0]);
    let () = redis::cmd("SET")
        .arg(&runs_key)
        .arg("a string where a sorted set belongs")
        .query_async(&mut conn)
        .await
        .unwrap();
    let response = app.get(&format!("/v1/jobs/{id}/runs"), ACCOUNT_KEY).await;
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "internal");
    assert!(
        body["error_id"].as_str().is_some_and(|id| id.len() == 32),
        "{body}"
    );
}

/// With the local provider and no `[ec2]` endpoint, a job that needs an existing instance is refused
/// at the door naming the field (no EC2 call is made, no credential chain is searched), on the
/// resource API and on HRM's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_runners_without_ec2_are_refused_naming_the_field() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let response = app
        .post_raw(
            "/v1/jobs",
            ACCOUNT_KEY,
            &json!({"schedule": "@hourly",
                "runner": {"type": "instance", "instance_id": "i-0123456789abcdef0", "action": "start"}})
            .to_string(),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "runner.instance_id", "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no EC2 is configured"));

    let form = "action_url=http%3A%2F%2F127.0.0.1%3A9%2Fx&instance_id=i-0123456789abcdef0\
        &access_key_id=AKIA&access_key_secret=s";
    let response = app.post_form("/tasks", ACCOUNT_KEY, form).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errors"]["instance_id"]
            .as_str()
            .is_some_and(|why| why.contains("no EC2 is configured")),
        "{body}"
    );
}

/// A known path with a method it does not serve is a 405 with `Allow`, on every surface, as the
/// seeds answered; an unknown path stays a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_known_route_is_405_with_allow() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    for (method, path, allowed) in [
        (Method::POST, "/v1/minion/ping", "GET"),
        (Method::PATCH, "/tasks/abc", "GET"),
        (Method::DELETE, "/schedule", "POST"),
        (Method::PUT, "/list", "GET"),
        (Method::DELETE, "/JobScheduler", "POST"),
        (Method::PATCH, "/jobs", "GET"),
        (Method::DELETE, "/v1/runs/abc", "GET"),
        (Method::PATCH, "/v1/jobs/abc", "PUT"),
        (Method::PUT, "/healthcheck", "GET"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .header("X-Auth-Token", ACCOUNT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(
            allow.split(", ").any(|m| m == allowed),
            "{method} {path}: Allow: {allow}"
        );
        assert!(
            !allow.split(", ").any(|m| m == method.as_str()),
            "{method} {path}: Allow: {allow}"
        );
    }
    let unknown = app.get("/nowhere/at/all", ACCOUNT_KEY).await;
    assert_eq!(unknown.status(), 404);
}
