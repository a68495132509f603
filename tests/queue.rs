//! Overlap that queues: under `concurrency: queue` a fire that comes while a run is under way waits
//! as a `queued` run and starts when that run ends (one waits; later fires are skipped and counted);
//! under `queue_all` each waits in order. A waiting fire lives in Redis: an ending whose next step
//! was lost (a crash between the two) and a wiped broker still start it, once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::model::RunState;
use spot_shared::store::FireRecord;
use spot_tests::image::busybox_image;
use spot_tests::*;

/// With the provisioner stopped and replaced while a fire waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_fire_waits_for_the_run_under_way_and_starts_within_a_second_of_its_end() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let image = busybox_image().await;
    // Every 2 s, each run 4 s: one fire waits, the one after it finds the line full.
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "*/2 * * * * *",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'sleep 4; echo done'"},
                "policies": {"concurrency": "queue"},
            }),
        )
        .await;
    // A fire waits; the provisioner is stopped and replaced meanwhile.
    eventually(Duration::from_secs(60), "a fire in line", || async {
        let runs = app.runs(&id).await;
        runs.iter()
            .any(|run| run["state"] == "queued")
            .then_some(())
    })
    .await;
    provisioner.stop().await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    eventually(
        Duration::from_secs(60),
        "a run started from the line",
        || async {
            let runs = app.runs(&id).await;
            runs.iter()
                .any(|run| entered(run, "queued").is_some() && entered(run, "running").is_some())
                .then_some(())
        },
    )
    .await;
    // Stopped: what still waits is cancelled as the run under way ends.
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{id}/disable"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let runs = eventually(Duration::from_secs(60), "every run ended", || async {
        let runs = app.runs(&id).await;
        runs.iter().all(|run| ended(run).is_some()).then_some(runs)
    })
    .await;

    let mut ran: Vec<&Value> = runs
        .iter()
        .filter(|run| entered(run, "running").is_some())
        .collect();
    ran.sort_by_key(|run| entered(run, "running"));
    assert!(ran.len() >= 2, "{runs:?}");
    for pair in ran.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let before_end = ended(before).expect("ended");
        // Never two at once: each started after the one before it ended.
        assert!(
            entered(after, "running").unwrap() >= before_end,
            "overlap: {before} {after}"
        );
        assert_eq!(before["state"], "succeeded", "{before}");
        // One that waited was being launched within a second of the end it waited for.
        if entered(after, "queued").is_some() {
            let started = entered(after, "provisioning").expect("launched");
            let waited = started - before_end;
            assert!(
                waited < chrono::Duration::seconds(1),
                "started {waited} after the run before it ended"
            );
        }
    }
    for run in &runs {
        assert_legal_history(run);
        if entered(run, "running").is_some() {
            assert_eq!(app.run_log(run).await.trim(), "done");
        }
    }
    let mut instants: Vec<&str> = runs
        .iter()
        .filter_map(|run| run["scheduled_at"].as_str())
        .collect();
    let all = instants.len();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), all, "one run per instant");
    assert_eq!(store.queued_count(&id).await.unwrap(), 0);
    // The fires that found the line full were skipped, and counted.
    let events = store.event_counts().await.unwrap();
    assert!(
        events.get("queue_full_skip").copied().unwrap_or(0) >= 1,
        "{events:?}"
    );
    provisioner.stop().await;
    reaper.stop().await;
}

/// `queue_all`: three fires recorded while the first is under way wait in order. The first ends with
/// the step that starts the next lost (as a crash between the two would lose it), and the broker's
/// queues are wiped: the sweep starts the line again, and each waiting run runs to its end, once,
/// one at a time, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_line_survives_a_lost_start_step_and_a_wiped_broker() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo ran $SPOT_SCHEDULED_AT; sleep 1'"},
                "policies": {"concurrency": "queue_all", "max_queued": 5},
            }),
        )
        .await;
    let job = store.get_job(&id).await.unwrap().unwrap();
    let base = Utc::now();
    let instant = |i: i64| {
        DateTime::from_timestamp_millis((base + chrono::Duration::seconds(i)).timestamp_millis())
            .unwrap()
    };
    // The first fire is under way (recorded, pending); three more wait behind it.
    let first = match store
        .record_fire(&job, job.generation, instant(0), 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("{other:?}"),
    };
    let mut waiting = Vec::new();
    for i in 1..=3 {
        match store
            .record_fire(&job, job.generation, instant(i), 1)
            .await
            .unwrap()
        {
            FireRecord::Queued(run_id) => waiting.push(run_id),
            other => panic!("{other:?}"),
        }
        // Delivered again: the same run, still waiting, not a second one.
        assert_eq!(
            store
                .record_fire(&job, job.generation, instant(i), 1)
                .await
                .unwrap(),
            FireRecord::Existing(waiting[waiting.len() - 1].clone())
        );
    }
    assert_eq!(store.queued_count(&id).await.unwrap(), 3);
    // The first ends, and the step that would start the next is lost.
    store
        .advance_run(
            &first,
            RunState::Failed,
            &[("error", "ended by the test".into())],
        )
        .await
        .unwrap();
    env.wipe_queues();

    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!(report.queued_started, 1, "{report:?}");
    // The one it started is under way now: a sweep at once starts nothing more.
    let again = reaper.sweep_once().await.unwrap();
    assert_eq!(again.queued_started, 0, "{again:?}");
    // From there each end starts the next.
    let runs = eventually(Duration::from_secs(90), "the line ran", || async {
        let runs = app.runs(&id).await;
        (runs.len() == 4
            && runs
                .iter()
                .all(|run| run["state"] != "queued" && ended(run).is_some()))
        .then_some(runs)
    })
    .await;
    let mut order = Vec::new();
    let mut previous_end = None;
    for run_id in &waiting {
        let run = runs
            .iter()
            .find(|run| run["id"] == run_id.as_str())
            .unwrap();
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_legal_history(run);
        let log = app.run_log(run).await;
        assert!(log.starts_with("ran "), "{log}");
        let started = entered(run, "running").unwrap();
        if let Some(end) = previous_end {
            assert!(started >= end, "one at a time, in order");
        }
        previous_end = ended(run);
        order.push(entered(run, "running"));
    }
    assert_eq!(order.len(), 3);
    assert_eq!(store.queued_count(&id).await.unwrap(), 0);
    // Nothing more starts: a second sweep finds no line.
    assert_eq!(reaper.sweep_once().await.unwrap().queued_started, 0);
    provisioner.stop().await;
}

/// A run that never reports its end cannot hold the line for ever: the first run's launch is lost
/// (no provisioner), the reaper's sweep ends it `provision_failed` once its relaunches are used up,
/// and that ending starts the fire waiting behind it, which then runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_the_sweeps_end_moves_the_line_on() {
    let mut env = TestEnv::new();
    env.settings.provisioner.max_relaunches = 0;
    let app = spawn_app(&env).await;
    let store = env.store().await;
    let image = busybox_image().await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo second'"},
                "policies": {"concurrency": "queue"},
            }),
        )
        .await;
    let job = store.get_job(&id).await.unwrap().unwrap();
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let stuck = match store
        .record_fire(&job, job.generation, now, 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("{other:?}"),
    };
    let waiting = match store
        .record_fire(&job, job.generation, now + chrono::Duration::seconds(1), 1)
        .await
        .unwrap()
    {
        FireRecord::Queued(run_id) => run_id,
        other => panic!("{other:?}"),
    };

    let mut settings = env.settings.clone();
    settings.reaper.pending_timeout_secs = 0;
    let reaper = spot_reaper::Reaper::build(settings).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!(report.provision_failed, 1, "{report:?}");
    let ended_run = store.get_run(&stuck).await.unwrap().unwrap();
    assert_eq!(ended_run.state, RunState::ProvisionFailed);
    assert_eq!(
        store.get_run(&waiting).await.unwrap().unwrap().state,
        RunState::Pending,
        "the line moved on with the ending"
    );

    let provisioner = spawn_provisioner(&env, &app.address).await;
    let run = eventually(Duration::from_secs(60), "the waiting run ran", || async {
        let runs = app.runs(&id).await;
        runs.into_iter()
            .find(|run| run["id"] == waiting.as_str() && run["state"] == "succeeded")
    })
    .await;
    assert_legal_history(&run);
    assert_eq!(app.run_log(&run).await.trim(), "second");
    provisioner.stop().await;
}
