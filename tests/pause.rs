//! Pause with a reason: `POST /v1/jobs/{id}/pause {"note"}` stops a job's fires (a fire armed before
//! the pause and delivered after it runs nothing), every listing shows the note, and
//! `POST /v1/jobs/{id}/resume` arms it again from now. Bad requests change nothing.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::messages::FireMessage;
use spot_shared::model::RunState;
use spot_shared::store::Moved;
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn post(app: &TestApp, path: &str, body: Option<Value>) -> (u16, Value) {
    let response = app.send(Method::POST, path, ACCOUNT_KEY, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_fires_nothing_shows_its_note_and_resumes_from_now() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "* * * * * *", "runner": {"type": "dummy", "template": "beat"}}),
        )
        .await;
    eventually(Duration::from_secs(15), "a first run", || async {
        (!app.runs(&id).await.is_empty()).then_some(())
    })
    .await;
    let before = store.get_job(&id).await.unwrap().unwrap();

    let (status, paused) = post(
        &app,
        &format!("/v1/jobs/{id}/pause"),
        Some(json!({"note": "upstream down, INC-7"})),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"]["note"], "upstream down, INC-7");
    assert_eq!(paused["enabled"], false);
    assert!(paused["next_fire_at"].is_null(), "{paused}");
    let paused_at = paused["paused"]["at"].clone();
    // A fire in flight when the pause landed may still finish; after it, nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let runs_at_pause = app.runs(&id).await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.runs(&id).await.len(),
        runs_at_pause,
        "fired while paused"
    );

    // A timer armed before the pause, delivered now (a redelivery, a slow broker): it runs nothing.
    let provisioner = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    let next = before.next_fire_at.expect("armed before the pause");
    let stale = FireMessage::scheduled(&id, before.generation, next);
    assert_eq!(
        provisioner.handle_fire(&stale).await.unwrap(),
        spot_provisioner::FireOutcome::Stale
    );
    assert_eq!(app.runs(&id).await.len(), runs_at_pause);

    // Every listing shows the note; the preview has no fires; run-now is refused.
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(
        listed["jobs"][0]["paused"]["note"], "upstream down, INC-7",
        "{listed}"
    );
    let next: Value = app
        .get(&format!("/v1/jobs/{id}/next"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["next"], json!([]), "{next}");
    let (status, _) = post(&app, &format!("/v1/jobs/{id}/run"), None).await;
    assert_eq!(status, 409);

    // Paused again: the new note, the first time.
    let (status, again) = post(
        &app,
        &format!("/v1/jobs/{id}/pause"),
        Some(json!({"note": "still down"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["paused"]["note"], "still down");
    assert_eq!(again["paused"]["at"], paused_at);

    // Resumed: the note goes, the next fire is armed from now, and it fires.
    let resumed_at = Utc::now();
    let (status, resumed) = post(&app, &format!("/v1/jobs/{id}/resume"), None).await;
    assert_eq!(status, 200, "{resumed}");
    assert!(resumed["paused"].is_null(), "{resumed}");
    assert_eq!(resumed["enabled"], true);
    eventually(
        Duration::from_secs(15),
        "a run after the resume",
        || async {
            let runs = app.runs(&id).await;
            runs.iter()
                .any(|run| {
                    serde_json::from_value::<chrono::DateTime<Utc>>(run["scheduled_at"].clone())
                        .is_ok_and(|at| at >= resumed_at - chrono::Duration::seconds(1))
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn bad_pauses_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let path = format!("/v1/jobs/{id}/pause");
    for (body, field) in [
        (json!({"note": "x".repeat(1025)}), "note"),
        (json!({"note": "bell\u{7}"}), "note"),
        (json!({"note": "x", "until": "tomorrow"}), ""),
        (json!({"note": 7}), ""),
    ] {
        let (status, error) = post(&app, &path, Some(body)).await;
        assert_eq!(status, 400, "{error}");
        if !field.is_empty() {
            assert_eq!(error["field"], field, "{error}");
        }
    }
    let job: Value = app
        .get(&format!("/v1/jobs/{id}"), ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["enabled"], true, "{job}");
    assert!(job["paused"].is_null(), "{job}");
    assert_eq!(job["generation"], 1, "{job}");
    let (status, _) = post(&app, "/v1/jobs/nosuchjob/pause", Some(json!({"note": "x"}))).await;
    assert_eq!(status, 404);

    // An empty body pauses without a note; a replace that saves the job enabled resumes it.
    let (status, paused) = post(&app, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(paused["paused"]["note"], "");
    let replaced = app
        .send(
            Method::PUT,
            &format!("/v1/jobs/{id}"),
            ACCOUNT_KEY,
            Some(json!({"schedule": "@daily", "runner": {"type": "dummy", "template": "x"}})),
        )
        .await;
    assert_eq!(replaced.status(), 200);
    let replaced: Value = replaced.json().await.unwrap();
    assert!(replaced["paused"].is_null(), "{replaced}");
    assert_eq!(replaced["enabled"], true);
}

/// `pause_after_failures: 2` on a container that exits 3 every 2 s: the job pauses itself with a note
/// naming the streak and the last run; an ending reported again (a redelivered callback) counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_failing_in_a_row_pauses_itself_once_with_a_note() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "*/2 * * * * *",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'exit 3'"},
                "policies": {"pause_after_failures": 2}}),
        )
        .await;
    let paused = eventually(Duration::from_secs(90), "the job paused itself", || async {
        let job = store.get_job(&id).await.ok()??;
        job.paused.map(|pause| (job.generation, pause))
    })
    .await;
    assert!(
        paused
            .1
            .note
            .starts_with("paused after 2 runs in a row ended failed"),
        "{:?}",
        paused.1
    );
    let failed: Vec<Value> = app
        .runs(&id)
        .await
        .into_iter()
        .filter(|run| run["state"] == "failed")
        .collect();
    assert!(failed.len() >= 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .any(|run| paused.1.note.contains(run["id"].as_str().unwrap())),
        "the note names the last failed run: {}",
        paused.1.note
    );

    // Runs in flight at the pause end on their own and pause nothing again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.generation, paused.0, "paused once");

    // Resumed, then a failed run's ending reported again: it moved nothing, so it counts nothing.
    let (status, _) = post(&app, &format!("/v1/jobs/{id}/resume"), None).await;
    assert_eq!(status, 200);
    let resumed = store.get_job(&id).await.unwrap().unwrap();
    for run in &failed {
        let run = store
            .get_run(run["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        let again =
            spot_shared::policy::end_run(&store, Some(&resumed), &run, RunState::Failed, &[])
                .await
                .unwrap();
        assert_eq!(again, Moved::AlreadyThere);
    }
    let job = store.get_job(&id).await.unwrap().unwrap();
    assert!(job.paused.is_none() && job.enabled, "{job:?}");
    let (status, _) = post(&app, &format!("/v1/jobs/{id}/disable"), None).await;
    assert_eq!(status, 200);
}
