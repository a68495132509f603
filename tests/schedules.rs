//! Recurring schedules on real Redis, RabbitMQ and Docker: every fire at its instant, once; old timers
//! of changed jobs dropped; catch-up after downtime; concurrency policies; a wiped broker heals.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

fn instant(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

/// Scheduled instants of a job's runs, oldest first.
async fn scheduled_instants(app: &TestApp, job_id: &str) -> Vec<DateTime<Utc>> {
    let mut instants: Vec<_> = app
        .runs(job_id)
        .await
        .iter()
        .map(|run| instant(&run["scheduled_at"]))
        .collect();
    instants.sort();
    instants
}

async fn container_job(app: &TestApp, schedule: &str, cmd: &str, policies: Value) -> String {
    let image = busybox_image().await;
    app.create_job(
        ACCOUNT_KEY,
        json!({
            "schedule": schedule,
            "runner": {"type": "container", "image": image, "cmd": cmd},
            "policies": policies,
        }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_job_fires_once_at_each_instant() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let id = container_job(&app, "*/2 * * * * *", "true", json!({})).await;

    let instants = eventually(Duration::from_secs(60), "three runs", || async {
        let instants = scheduled_instants(&app, &id).await;
        (instants.len() >= 3).then_some(instants)
    })
    .await;
    for pair in instants.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(2),
            "{instants:?}"
        );
    }
    for at in &instants {
        assert_eq!(at.timestamp() % 2, 0);
        assert_eq!(at.timestamp_subsec_millis(), 0);
    }
    // Each run fired at its instant, not before, and promptly, and moved only along legal steps.
    for run in app.runs(&id).await {
        if run["state"] == "succeeded" {
            assert_legal_history(&run);
        }
        let scheduled = instant(&run["scheduled_at"]);
        let fired = instant(&run["transitions"]["pending"]);
        assert!(fired >= scheduled, "{run}");
        assert!(fired - scheduled < chrono::Duration::seconds(2), "{run}");
    }
    // The job shows its next fire, on the schedule.
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(instant(&job["next_fire_at"]).timestamp() % 2, 0);

    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_edited_and_deleted_jobs_never_fire_from_old_timers() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let store = env.store().await;
    let due = (Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();

    let disabled = container_job(&app, &due, "true", json!({})).await;
    let edited = container_job(&app, &due, "true", json!({})).await;
    let deleted = container_job(&app, &due, "true", json!({})).await;
    let control = container_job(&app, &due, "true", json!({})).await;

    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{disabled}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let image = busybox_image().await;
    let response = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{edited}"),
            ACCOUNT_KEY,
            Some(json!({"schedule": "2099-01-01T00:00:00Z", "runner": {"type": "container", "image": image}})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["generation"], 2);
    assert_eq!(job["next_fire_at"], "2099-01-01T00:00:00Z");
    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{deleted}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 204);

    // The control job fires; the others' timers arrive at the same moment and are dropped.
    eventually(
        Duration::from_secs(30),
        "the control job to fire",
        || async { (!app.runs(&control).await.is_empty()).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(app.runs(&disabled).await.is_empty());
    assert!(app.runs(&edited).await.is_empty());
    assert!(store.job_run_ids(&deleted, 0).await.unwrap().is_empty());
    assert_eq!(
        app.get(&format!("/v1/jobs/{deleted}"), ACCOUNT_KEY)
            .await
            .status(),
        404
    );
    provisioner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_downtime_a_recurring_job_runs_once_for_what_it_missed() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let reaper = spawn_reaper(&env).await;
    // Every 2 s, with no provisioner running for three periods and more.
    let id = container_job(&app, "*/2 * * * * *", "true", json!({})).await;
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    let restart = Utc::now();
    let provisioner = spawn_provisioner(&env, &app.address).await;

    let instants = eventually(
        Duration::from_secs(60),
        "the catch-up and two more runs",
        || async {
            let instants = scheduled_instants(&app, &id).await;
            (instants.len() >= 3).then_some(instants)
        },
    )
    .await;
    let missed: Vec<_> = instants
        .iter()
        .filter(|at| **at < restart - chrono::Duration::seconds(1))
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "one catch-up run for the missed fires: {instants:?}"
    );
    // The runs after it are on the schedule again, after the restart.
    for at in instants.iter().skip(1) {
        assert!(
            *at >= restart - chrono::Duration::seconds(2),
            "{instants:?} restart {restart}"
        );
        assert_eq!(at.timestamp() % 2, 0);
    }
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forbid_skips_fires_while_a_run_is_active() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    // Fires every 2 s; each run takes 5 s.
    let id = container_job(
        &app,
        "*/2 * * * * *",
        "sleep 5",
        json!({"concurrency": "forbid"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _ = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;

    let runs = app.runs(&id).await;
    assert!(!runs.is_empty());
    assert!(
        runs.len() <= 3,
        "at most one run per 5 s over 12 s: {}",
        runs.len()
    );
    // No two runs overlapped.
    let mut spans: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = runs
        .iter()
        .map(|run| {
            let t = &run["transitions"];
            let end = ["succeeded", "failed", "cancelled", "timed_out"]
                .iter()
                .find_map(|s| t.get(*s).map(instant));
            (instant(&t["pending"]), end)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        let (_, end) = pair[0];
        let end = end.expect("the earlier run ended before the next began");
        assert!(end <= pair[1].0, "{spans:?}");
    }
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_cancels_the_active_run_giving_it_its_stop_signal_and_grace() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    // Traps SIGTERM and takes a second of its 5 s grace to "checkpoint".
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "*/3 * * * * *",
                "runner": {"type": "container", "image": image, "stop_grace_secs": 5,
                    "cmd": "sh -c 'trap \"sleep 1; echo checkpoint saved; exit 0\" TERM; echo started; while true; do sleep 1; done'"},
                "policies": {"concurrency": "replace"},
            }),
        )
        .await;

    let runs = eventually(Duration::from_secs(60), "a replaced run", || async {
        let runs = app.runs(&id).await;
        runs.iter()
            .any(|run| run["state"] == "cancelled")
            .then_some(runs)
    })
    .await;
    let _ = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    // The newest run is the live one; every older one was cancelled, and its instance terminated.
    let store = env.store().await;
    for run in runs.iter().skip(1) {
        assert_eq!(run["state"], "cancelled", "{run}");
        assert_legal_history(run);
        assert_terminated(&store, run["instance_id"].as_str().unwrap()).await;
    }
    // Each cancelled run that had started its code was told, and had its grace to say so.
    let started: Vec<&Value> = runs
        .iter()
        .skip(1)
        .filter(|run| run["transitions"]["running"].is_string())
        .collect();
    assert!(!started.is_empty(), "{runs:?}");
    for run in started {
        let log = eventually(Duration::from_secs(15), "the checkpoint line", || async {
            let log = app.run_log(run).await;
            log.contains("checkpoint saved").then_some(log)
        })
        .await;
        assert!(log.starts_with("started"), "{log}");
    }
    provisioner.stop().await;
    reaper.stop().await;
}

/// The timers RabbitMQ holds are purged after the pump handed them over, so Redis counts them armed
/// and nothing but the reconciler can bring them back: each job still fires, once, late by about the
/// reconciler's grace and period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_queue_purged_every_job_still_fires() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let mut settings = env.settings.clone();
    settings.api.public_url = app.address.clone();
    settings.provisioner.reconcile_interval_secs = 1;
    settings.provisioner.reconcile_grace_secs = 1;
    let grace = chrono::Duration::seconds(1);
    let provisioner = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();
    // Jobs keep their time to the millisecond.
    let due = (Utc::now() + chrono::Duration::seconds(4)).trunc_subsecs_ms();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(container_job(&app, &due.to_rfc3339(), "true", json!({})).await);
    }
    // The pump hands all three to RabbitMQ (well within its horizon) while nothing consumes them.
    let armed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut armed = 0;
        while armed < ids.len() {
            armed += provisioner.pump_once().await.unwrap();
        }
        armed
    })
    .await
    .expect("the pump hands the timers over");
    assert_eq!(armed, ids.len());

    // Then every queue they can be in is purged: the slowest level first, since a timer only ever
    // moves to a faster level or the fires queue, so none slips past the purge.
    let broker = env.broker().await;
    let channel = broker.channel().await.unwrap();
    let topology = broker.topology().clone();
    let mut queues: Vec<String> = (0..topology.timers.levels())
        .rev()
        .map(|k| topology.timers.level_name(k))
        .collect();
    queues.push(topology.fires_queue());
    let mut purged = 0;
    for queue in &queues {
        purged += channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    assert!(purged > 0, "the pump's messages were in RabbitMQ");

    let provisioner = run_provisioner(provisioner);
    let reaper = spawn_reaper(&env).await;
    for id in &ids {
        let run = eventually(Duration::from_secs(30), "the job to fire", || async {
            app.runs(id).await.into_iter().next()
        })
        .await;
        let fired = instant(&run["transitions"]["pending"]);
        // Brought back by the reconciler (overdue by its grace), within its period and the hops.
        assert!(
            fired >= due + grace && fired - due < chrono::Duration::milliseconds(3_500),
            "{fired} vs {due}"
        );
        assert_eq!(instant(&run["scheduled_at"]), due);
        assert_eq!(app.runs(id).await.len(), 1, "fired once");
    }
    provisioner.stop().await;
    reaper.stop().await;
}

trait TruncMs {
    fn trunc_subsecs_ms(self) -> Self;
}

impl TruncMs for DateTime<Utc> {
    fn trunc_subsecs_ms(self) -> Self {
        DateTime::from_timestamp_millis(self.timestamp_millis()).unwrap()
    }
}

#[tokio::test]
async fn accounts_see_and_touch_only_their_own_jobs() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let image = busybox_image().await;
    let body = json!({"schedule": "@daily", "group": "nightly", "runner": {"type": "container", "image": image}});
    let id = app.create_job(ACCOUNT_KEY, body.clone()).await;
    let before: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();

    for (method, path, body) in [
        (Method::GET, format!("/v1/jobs/{id}"), None),
        (Method::PUT, format!("/v1/jobs/{id}"), Some(body.clone())),
        (Method::DELETE, format!("/v1/jobs/{id}"), None),
        (Method::POST, format!("/v1/jobs/{id}/disable"), None),
        (Method::POST, format!("/v1/jobs/{id}/run"), None),
        (Method::GET, format!("/v1/jobs/{id}/runs"), None),
        (Method::GET, format!("/v1/jobs/{id}/next"), None),
    ] {
        let response = app
            .send(method.clone(), &path, OTHER_ACCOUNT_KEY, body.clone())
            .await;
        assert_eq!(response.status(), 404, "{method} {path} as another account");
        let response = app
            .send(method.clone(), &path, "bad-key", body.clone())
            .await;
        assert_eq!(response.status(), 403, "{method} {path} with a bad key");
    }
    let listed: Value = app
        .get("/v1/jobs", OTHER_ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"], json!([]));
    let response = app.get("/v1/jobs?account=acme", OTHER_ACCOUNT_KEY).await;
    assert_eq!(response.status(), 404);
    // Nothing changed.
    let after: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    let listed: Value = app
        .get("/v1/jobs?group=nightly", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    let listed: Value = app
        .get("/v1/jobs?group=other", ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"], json!([]));
}

#[tokio::test]
async fn next_fire_times_are_previewed_in_the_jobs_time_zone() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "30 2 * * *",
                "timezone": "America/New_York",
                "runner": {"type": "container", "image": image},
                "policies": {"start_at": "2027-03-13T00:00:00Z"},
            }),
        )
        .await;
    let next: Value = app
        .get(&format!("/v1/jobs/{id}/next?count=3"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    // 2027-03-14 is the spring-forward day: 02:30 does not exist, so it fires at 03:00 EDT.
    assert_eq!(
        next["next"],
        json!([
            "2027-03-13T07:30:00Z",
            "2027-03-14T07:00:00Z",
            "2027-03-15T06:30:00Z"
        ])
    );

    for (body, field) in [
        (
            json!({"schedule": "0 0 30 2 *", "runner": {"type": "container", "image": "a"}}),
            "schedule",
        ),
        (
            json!({"schedule": "@daily", "timezone": "Mars/Base", "runner": {"type": "container", "image": "a"}}),
            "timezone",
        ),
        (
            json!({"schedule": "@daily", "runner": {"type": "container", "image": "a"}, "policies": {"concurrency": "sometimes"}}),
            "policies.concurrency",
        ),
        (
            json!({"schedule": "@daily", "runner": {"type": "shell", "image": "a"}}),
            "runner.type",
        ),
        (
            json!({"schedule": "@daily", "group": "no spaces", "runner": {"type": "container", "image": "a"}}),
            "group",
        ),
    ] {
        let response = app
            .post_raw("/v1/jobs", ACCOUNT_KEY, &body.to_string())
            .await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["field"]
                .as_str()
                .unwrap()
                .starts_with(field.split('.').next().unwrap()),
            "{body}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_now_runs_a_just_created_job() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let id = container_job(&app, "@yearly", "echo ran now", json!({})).await;
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/run"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    let run = eventually(Duration::from_secs(60), "the run to finish", || async {
        app.runs(&id)
            .await
            .into_iter()
            .find(|run| run["state"] == "succeeded")
    })
    .await;
    assert_eq!(
        app.run_log(&run).await,
        "ran now
"
    );
    // The schedule did not move: the next fire is still next New Year.
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        job["next_fire_at"]
            .as_str()
            .unwrap()
            .ends_with("-01-01T00:00:00Z"),
        "{job}"
    );
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_run_is_retried_with_backoff_up_to_its_attempts() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let due = Utc::now() + chrono::Duration::seconds(1);
    let policies =
        json!({"retries": {"max_attempts": 3, "backoff_secs": 1, "backoff_max_secs": 2}});
    let id = container_job(&app, &due.to_rfc3339(), "sh -c 'exit 7'", policies).await;

    let runs = eventually(Duration::from_secs(60), "three failed attempts", || async {
        let runs = app.runs(&id).await;
        (runs.len() == 3 && runs.iter().all(|run| run["state"] == "failed")).then_some(runs)
    })
    .await;
    let mut attempts: Vec<u64> = runs
        .iter()
        .map(|run| run["attempt"].as_u64().unwrap())
        .collect();
    attempts.sort();
    assert_eq!(attempts, vec![1, 2, 3]);
    // Every attempt belongs to the same scheduled instant and kept its exit code.
    for run in &runs {
        assert_legal_history(run);
        assert_eq!(instant(&run["scheduled_at"]), due.trunc_subsecs_ms());
        assert_eq!(run["exit_code"], 7);
    }
    // No fourth attempt comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.runs(&id).await.len(), 3);
    provisioner.stop().await;
    reaper.stop().await;
}

/// Retry rules by exit code, the first that matches deciding: the container reads its attempt from
/// `SPOT_ATTEMPT`, exits 75 ("try again", listed in `on_exit_codes`) the first time and 2 ("bad
/// input", listed in `never_on_exit_codes`) the second, so exactly two attempts run though five are
/// allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_rules_retry_one_exit_code_and_never_another() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let due = Utc::now() + chrono::Duration::seconds(1);
    let policies = json!({"retries": {
        "max_attempts": 5, "backoff_secs": 1, "backoff_max_secs": 1,
        "on_exit_codes": [75], "never_on_exit_codes": [2],
    }});
    let cmd = r#"sh -c 'echo previous=$SPOT_PREVIOUS_RUN_ID; if [ "$SPOT_ATTEMPT" = 1 ]; then exit 75; else exit 2; fi'"#;
    let id = container_job(&app, &due.to_rfc3339(), cmd, policies).await;

    let runs = eventually(Duration::from_secs(60), "two failed attempts", || async {
        let runs = app.runs(&id).await;
        (runs.len() == 2 && runs.iter().all(|run| run["state"] == "failed")).then_some(runs)
    })
    .await;
    let mut outcomes: Vec<(u64, i64, bool)> = runs
        .iter()
        .map(|run| {
            assert_legal_history(run);
            let exit = run["exit_code"].as_i64().unwrap();
            (
                run["attempt"].as_u64().unwrap(),
                exit,
                run["will_retry"] == true,
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, vec![(1, 75, true), (2, 2, false)]);
    // The second attempt is told the run it follows, to resume from its checkpoint.
    let first = runs.iter().find(|run| run["attempt"] == 1).unwrap();
    let second = runs.iter().find(|run| run["attempt"] == 2).unwrap();
    assert_eq!(app.run_log(first).await.trim(), "previous=");
    assert_eq!(
        app.run_log(second).await.trim(),
        format!("previous={}", first["id"].as_str().unwrap())
    );
    // The rule held: no third attempt comes, though the policy allows five.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.runs(&id).await.len(), 2);

    // Rules that contradict each other are refused, naming the field.
    let response = app
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            ACCOUNT_KEY,
            Some(json!({
                "schedule": due.to_rfc3339(),
                "runner": {"type": "dummy", "template": "t"},
                "policies": {"retries": {"on_exit_codes": [3], "never_on_exit_codes": [3]}},
            })),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.to_string().contains("policies.retries.on_exit_codes"),
        "{body}"
    );
    provisioner.stop().await;
    reaper.stop().await;
}

/// A container past its timeout gets its stop signal first and the grace to end on its own: one
/// that traps SIGTERM writes its checkpoint line before it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_past_its_timeout_gets_its_stop_signal_and_grace() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": Utc::now().to_rfc3339(),
                "runner": {"type": "container", "image": image, "stop_grace_secs": 10,
                    "cmd": "sh -c 'trap \"echo checkpoint saved; exit 0\" TERM; echo started; while true; do sleep 1; done'"},
                "policies": {"timeout_secs": 2},
            }),
        )
        .await;
    let run = eventually(Duration::from_secs(60), "the run to time out", || async {
        app.runs(&id)
            .await
            .into_iter()
            .find(|run| run["state"] == "timed_out")
    })
    .await;
    assert_legal_history(&run);
    let log = eventually(Duration::from_secs(15), "the checkpoint line", || async {
        let log = app.run_log(&run).await;
        log.contains("checkpoint saved").then_some(log)
    })
    .await;
    assert!(log.starts_with("started"), "{log}");
    // A signal no shell knows is refused, naming the field.
    let refused = app
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            ACCOUNT_KEY,
            Some(json!({"schedule": "@yearly",
                "runner": {"type": "container", "image": image, "stop_signal": "SIGBOGUS"}})),
        )
        .await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("stop_signal") && body.contains("SIGTERM"),
        "{body}"
    );
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_past_its_timeout_is_timed_out_and_its_instance_terminated() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let due = Utc::now().to_rfc3339();
    let id = container_job(&app, &due, "sleep 60", json!({"timeout_secs": 2})).await;
    let status = eventually(Duration::from_secs(60), "the run to time out", || async {
        let status = app.status(&id).await;
        (status["run"]["state"] == "timed_out" && status["aws"]["state"] == "terminated")
            .then_some(status)
    })
    .await;
    assert_eq!(status["status"], "failed");
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_newest_runs_are_kept() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let id = container_job(&app, "* * * * * *", "true", json!({"history_limit": 2})).await;
    let store = env.store().await;
    // Wait until more than two fires happened, then check only two runs remain.
    eventually(Duration::from_secs(30), "four fires", || async {
        let job = store.get_job(&id).await.unwrap().unwrap();
        (job.next_fire_at? - job.created_at > chrono::Duration::seconds(4)).then_some(())
    })
    .await;
    let _ = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    let runs = app.runs(&id).await;
    assert!(runs.len() <= 2, "{} runs kept", runs.len());
    assert!(!runs.is_empty());
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fire_later_than_its_misfire_grace_is_skipped() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let reaper = spawn_reaper(&env).await;
    let id = container_job(
        &app,
        "*/2 * * * * *",
        "true",
        json!({"misfire_grace_secs": 1}),
    )
    .await;
    // The provisioner is down for several periods: the waiting fire is late beyond its grace.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let restart = Utc::now();
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let instants = eventually(
        Duration::from_secs(60),
        "two runs after the restart",
        || async {
            let instants = scheduled_instants(&app, &id).await;
            (instants.len() >= 2).then_some(instants)
        },
    )
    .await;
    for at in &instants {
        assert!(
            *at >= restart - chrono::Duration::seconds(1),
            "a late fire ran: {instants:?}, restart {restart}"
        );
    }
    provisioner.stop().await;
    reaper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runs_output_can_be_followed_while_it_runs() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let id = container_job(
        &app,
        &Utc::now().to_rfc3339(),
        "sh -c 'echo first; sleep 2; echo second'",
        json!({}),
    )
    .await;
    let run_id = eventually(Duration::from_secs(30), "the run to be running", || async {
        let run = app.runs(&id).await.into_iter().next()?;
        (run["state"] == "running").then(|| run["id"].as_str().unwrap().to_string())
    })
    .await;
    let response = app
        .get(&format!("/v1/runs/{run_id}/logs?follow=true"), ACCOUNT_KEY)
        .await;
    assert_eq!(response.status(), 200);
    // The stream ends when the run does, with all of its output.
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "first\nsecond\n");
    provisioner.stop().await;
    reaper.stop().await;
}

/// Every schedule form, stored in Redis and previewed through the api, at the instants it must fire.
#[tokio::test]
async fn every_schedule_form_fires_at_its_instants() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let image = busybox_image().await;
    let preview = |schedule: &'static str,
                   timezone: &'static str,
                   start_at: Option<&'static str>| {
        let app = &app;
        async move {
            let mut body = json!({"schedule": schedule, "timezone": timezone, "runner": {"type": "container", "image": image}});
            if let Some(start) = start_at {
                body["policies"] = json!({"start_at": start});
            }
            let id = app.create_job(ACCOUNT_KEY, body).await;
            let job: Value = app
                .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .unwrap();
            let next: Value = app
                .get(&format!("/v1/jobs/{id}/next?count=3"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .unwrap();
            let fires: Vec<DateTime<Utc>> = next["next"]
                .as_array()
                .unwrap()
                .iter()
                .map(instant)
                .collect();
            (instant(&job["created_at"]), fires)
        }
    };
    let minute =
        |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp() - t.timestamp() % 60, 0).unwrap();

    let (created, fires) = preview("* * * ? *", "UTC", None).await;
    let first = minute(created) + chrono::Duration::minutes(1);
    assert_eq!(
        fires,
        vec![
            first,
            first + chrono::Duration::minutes(1),
            first + chrono::Duration::minutes(2)
        ]
    );

    let (created, fires) = preview("@every 90s", "UTC", None).await;
    let anchor = created.trunc_subsecs_ms();
    assert_eq!(
        fires,
        (1..=3)
            .map(|k| anchor + chrono::Duration::seconds(90 * k))
            .collect::<Vec<_>>()
    );

    let (created, fires) = preview("rate(5 minutes)", "UTC", None).await;
    let anchor = created.trunc_subsecs_ms();
    assert_eq!(
        fires,
        (1..=3)
            .map(|k| anchor + chrono::Duration::minutes(5 * k))
            .collect::<Vec<_>>()
    );

    let (_, fires) = preview("cron(0 12 * * ? *)", "UTC", Some("2027-01-01T00:00:00Z")).await;
    assert_eq!(
        fires,
        vec![
            at("2027-01-01T12:00:00Z"),
            at("2027-01-02T12:00:00Z"),
            at("2027-01-03T12:00:00Z")
        ]
    );

    let (_, fires) = preview("@hourly", "UTC", Some("2027-01-01T00:30:00Z")).await;
    assert_eq!(
        fires,
        vec![
            at("2027-01-01T01:00:00Z"),
            at("2027-01-01T02:00:00Z"),
            at("2027-01-01T03:00:00Z")
        ]
    );

    let (_, fires) = preview(
        "0 30 9 * * mon-fri",
        "Europe/Paris",
        Some("2027-01-01T00:00:00Z"),
    )
    .await;
    // 2027-01-01 is a Friday; then Monday and Tuesday. Paris is UTC+1 in winter.
    assert_eq!(
        fires,
        vec![
            at("2027-01-01T08:30:00Z"),
            at("2027-01-04T08:30:00Z"),
            at("2027-01-05T08:30:00Z")
        ]
    );

    // DST in New York: 2027-11-07 repeats 01:00-02:00; 01:30 fires once, at its first occurrence (EDT).
    let (_, fires) = preview(
        "30 1 * * *",
        "America/New_York",
        Some("2027-11-06T00:00:00Z"),
    )
    .await;
    assert_eq!(
        fires,
        vec![
            at("2027-11-06T05:30:00Z"),
            at("2027-11-07T05:30:00Z"),
            at("2027-11-08T06:30:00Z")
        ]
    );
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}
