//! The reaper's sweep heals every stuck run, not only runs with an instance: a run left `pending` by a
//! lost fire message or a crashed provisioner never started the user's code, so it is launched again
//! as the same attempt (never counted against its retries) until `provisioner.max_relaunches`, then
//! ends `provision_failed`; so is a run whose instance never started the container, and an HTTP
//! action whose provisioner stopped heartbeating (called again); work still under way is left alone.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use spot_provisioner::Recorded;
use spot_shared::messages::FireMessage;
use spot_shared::model::RunState;
use spot_shared::store::{FireRecord, Store};
use spot_tests::*;

/// A job whose fire was recorded as a pending run and then lost (no message carries it any more).
async fn lost_fire(store: &Store, app: &TestApp, body: Value) -> (String, String) {
    let job_id = app.create_job(ACCOUNT_KEY, body).await;
    let run_id = record_fire(store, &job_id).await;
    (job_id, run_id)
}

/// Records a fire of the job now, as a provisioner does first with a fire message.
async fn record_fire(store: &Store, job_id: &str) -> String {
    let job = store.get_job(job_id).await.unwrap().unwrap();
    match store
        .record_fire(&job, job.generation, Utc::now(), 1)
        .await
        .unwrap()
    {
        FireRecord::New(run_id) => run_id,
        other => panic!("a new run: {other:?}"),
    }
}

/// The job's next fire time, as its timer in Redis holds it.
async fn timer_of(store: &Store, job_id: &str) -> Option<chrono::DateTime<Utc>> {
    let far = Utc::now() + chrono::Duration::days(3650);
    store
        .due_timers(far, 100_000)
        .await
        .unwrap()
        .into_iter()
        .find_map(|(id, at)| (id == job_id).then_some(at))
}

/// An HRM task (the http runner) holding `action_url`; returns its id, which is its job's.
async fn http_task(app: &TestApp, action_url: &str) -> String {
    let body = json!({"action_url": action_url, "timeout": 600}).to_string();
    let response = app.post_raw("/tasks", ACCOUNT_KEY, &body).await;
    assert_eq!(response.status(), 200);
    response
        .text()
        .await
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string()
}

fn container(retries: u32) -> Value {
    json!({
        "schedule": "0 0 1 1 *",
        "runner": {"type": "container", "image": image::BUSYBOX_IMAGE, "cmd": "true"},
        "policies": {"retries": {"max_attempts": retries, "backoff_secs": 1, "backoff_max_secs": 1}},
    })
}

async fn reaper(env: &TestEnv, pending_secs: u64, heartbeat_secs: u64) -> spot_reaper::Reaper {
    let mut settings = env.settings.clone();
    settings.reaper.pending_timeout_secs = pending_secs;
    settings.reaper.heartbeat_timeout_secs = heartbeat_secs;
    spot_reaper::Reaper::build(settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_never_starts_is_relaunched_then_ends_provision_failed() {
    let mut env = TestEnv::new();
    env.settings.provisioner.max_relaunches = 2;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    // No provisioner runs: every relaunch is lost too.
    let (job_id, run_id) = lost_fire(&store, &app, container(3)).await;
    let reaper = reaper(&env, 0, 120).await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = reaper.sweep_once().await.unwrap();
    assert_eq!((first.relaunched, first.lost), (1, 0), "{first:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!((run.state, run.relaunches), (RunState::Pending, 1));
    assert!(
        run.relaunch_reasons[0].contains("no launch under way"),
        "{run:?}"
    );
    // The relaunch waits in Redis as the same attempt of the same instant, not a retry.
    let waiting = store.delayed_fires(10).await.unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let relaunch = &waiting[0].fire;
    assert!(relaunch.relaunch);
    assert_eq!(
        (
            relaunch.job_id.as_str(),
            relaunch.attempt,
            relaunch.scheduled_at.timestamp_millis()
        ),
        (job_id.as_str(), 1, run.scheduled_at.timestamp_millis())
    );
    // Not stuck again until its relaunch was due (1 s backoff).
    assert_eq!(reaper.sweep_once().await.unwrap().relaunched, 0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().relaunched, 1);
    // The second relaunch waits twice as long.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let last = reaper.sweep_once().await.unwrap();
    assert_eq!((last.relaunched, last.provision_failed), (0, 1), "{last:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::ProvisionFailed);
    assert_eq!(run.relaunches, 2);
    let error = run.error.unwrap_or_default();
    assert!(error.contains("after 2 relaunches"), "{error}");
    // Only then does the job's retry policy act: attempt 2 is armed.
    let retries: Vec<u32> = store
        .delayed_fires(10)
        .await
        .unwrap()
        .iter()
        .filter(|timer| !timer.fire.relaunch)
        .map(|timer| timer.fire.attempt)
        .collect();
    assert_eq!(retries, vec![2]);
}

/// The fire is lost at the worst point there is: just after the provisioner's one Redis step
/// recorded its run and moved the job's timer on, before any launch. The timer has nothing left to
/// heal, so only the recorded run can bring the user's code back: the sweep relaunches it, as attempt
/// 1, and a provisioner started afterwards runs the container to its own end, once. The container
/// prints the identity it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_lost_just_after_its_record_step_still_runs_the_users_code_once() {
    let env = TestEnv::new();
    let image = image::busybox_image().await;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let due = Utc::now() + chrono::Duration::milliseconds(300);
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": due.to_rfc3339(),
                "runner": {"type": "container", "image": image,
                    "cmd": "sh -c 'echo \"run=$SPOT_RUN_ID job=$SPOT_JOB_ID attempt=$SPOT_ATTEMPT at=$SPOT_SCHEDULED_AT\"'"},
            }),
        )
        .await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let at = timer_of(&store, &job_id).await.expect("armed");

    // The first provisioner takes the fire and dies right after its record step.
    let mut settings = env.settings.clone();
    settings.api.public_url = app.address.clone();
    let first = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();
    let fire = FireMessage::scheduled(&job_id, job.generation, at);
    let run_id = match first.record(&fire).await.unwrap() {
        Recorded::Run { run_id, new, .. } => {
            assert!(new);
            run_id
        }
        other => panic!("a run to launch: {other:?}"),
    };
    drop(first);
    assert_eq!(
        timer_of(&store, &job_id).await,
        None,
        "the one-shot's timer moved on in the same step"
    );
    // A redelivery of that fire would find it recorded, not fire it again.
    let again = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    assert!(matches!(
        again.record(&fire).await.unwrap(),
        Recorded::Run { new: false, .. }
    ));
    drop(again);

    let reaper = reaper(&env, 0, 120).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().relaunched, 1);
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let run = ended_run(&store, &run_id).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!((run.attempt, run.relaunches), (1, 1));
    assert_eq!(app.runs(&job_id).await.len(), 1, "one run, launched once");
    let output = app
        .get(&format!("/v1/runs/{run_id}/logs"), ACCOUNT_KEY)
        .await
        .text()
        .await
        .unwrap();
    let scheduled = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        output.trim(),
        format!("run={run_id} job={job_id} attempt=1 at={scheduled}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_whose_launch_is_under_way_is_left_alone() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (_, run_id) = lost_fire(&store, &app, container(1)).await;
    let _lease = store
        .try_lease(&format!("launch:{run_id}"), Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the lease is free");
    let reaper = reaper(&env, 0, 120).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
    assert_eq!(
        store.get_run(&run_id).await.unwrap().unwrap().state,
        RunState::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_action_whose_provisioner_died_is_called_again_as_the_same_attempt() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let worker = spot_tests::http_worker::HttpWorker::start(Duration::ZERO).await;
    // No provisioner runs: the task's fire is recorded here (its timer moved on, as a provisioner
    // records it), then its holder "dies".
    let task = http_task(&app, &format!("{}/work", worker.address)).await;
    let job = store.get_job(&task).await.unwrap().unwrap();
    let at = timer_of(&store, &task).await.expect("armed");
    let recorder = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    let fire = FireMessage::scheduled(&task, job.generation, at);
    let Recorded::Run { run_id, .. } = recorder.record(&fire).await.unwrap() else {
        panic!("a run to start");
    };
    drop(recorder);
    // Started by a provisioner that then died: running, no instance, heartbeats stop.
    store
        .advance_run(&run_id, RunState::Running, &[])
        .await
        .unwrap();
    store
        .set_run_fields(&run_id, &[("heartbeat_at", Utc::now().to_rfc3339())])
        .await
        .unwrap();
    let reaper = reaper(&env, 300, 1).await;
    assert_eq!(
        reaper.sweep_once().await.unwrap().relaunched,
        0,
        "it just beat"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!((report.relaunched, report.lost), (1, 0), "{report:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!((run.state, run.relaunches), (RunState::Pending, 1));
    assert!(run.relaunch_reasons[0].contains("heartbeat"), "{run:?}");
    // A provisioner calls the action again, as the same run and attempt.
    assert_eq!(worker.calls(), 0, "nothing called it yet");
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let run = ended_run(&store, &run_id).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!((run.attempt, run.relaunches), (1, 1));
    assert_eq!(
        worker.calls(),
        1,
        "called once here (the dead holder's call never happened)"
    );
    assert_eq!(app.runs(&task).await.len(), 1);
}

/// An HTTP action held by a live provisioner heartbeats, so a sweep with a short heartbeat timeout
/// leaves it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_action_held_by_a_live_provisioner_heartbeats() {
    let env = TestEnv::new();
    let store = env.store().await;
    // An action that answers only after a while: the provisioner holds it meanwhile.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(socket);
            });
        }
    });
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let job_id = http_task(&app, &format!("http://127.0.0.1:{port}/work")).await;
    let run_id = eventually(Duration::from_secs(10), "the action to start", || async {
        let runs = app.runs(&job_id).await;
        let run = runs.first()?;
        (run["state"] == "running").then(|| run["id"].as_str().unwrap().to_string())
    })
    .await;
    eventually(Duration::from_secs(5), "a heartbeat", || async {
        store.get_run(&run_id).await.ok()??.heartbeat_at.map(|_| ())
    })
    .await;
    let reaper = reaper(&env, 300, 30).await;
    assert_eq!(reaper.sweep_once().await.unwrap().lost, 0);
    assert_eq!(
        store.get_run(&run_id).await.unwrap().unwrap().state,
        RunState::Running
    );
}

/// A run that never started, behind thousands of older runs on instances in the live-run index,
/// is still found by the sweep (it once read only the 5,000 oldest entries and skipped the ones on
/// instances, so a run behind them was never looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_run_behind_many_runs_on_instances_is_still_found() {
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (job_id, run_id) = lost_fire(&store, &app, container(1)).await;
    // 6,000 older live runs, each on an instance, written past the store (their records only).
    let (mut conn, live) = env.raw_keys("runs:live").await;
    assert_eq!(live.len(), 1, "{live:?}");
    let index = live[0].clone();
    let run_prefix = index.trim_end_matches("runs:live").to_string();
    let long_ago = Utc::now().timestamp_millis() - 3_600_000;
    let mut pipe = redis::pipe();
    for n in 0..6000 {
        let id = format!("onaninstance{n:05}");
        pipe.zadd(&index, &id, long_ago + n)
            .ignore()
            .hset(
                format!("{run_prefix}run:{id}"),
                "instance_id",
                format!("i-{n:05}"),
            )
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();

    let reaper = reaper(&env, 0, 120).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!(report.relaunched, 1, "{report:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!((run.relaunches, run.job_id), (1, job_id));
}

/// With several shards, those holding no live run must not stop the sweep finding a stuck run in
/// another (an empty shard once made the whole stuck-run step fail: redis-rs refuses an empty pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_run_is_found_while_other_shards_hold_no_live_run() {
    let mut env = TestEnv::new();
    env.settings.redis.timer_shards = 4;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (_job_id, run_id) = lost_fire(&store, &app, container(1)).await;
    let reaper = reaper(&env, 0, 120).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!(report.relaunched, 1, "{report:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.relaunches, 1);
}

/// An instance that never starts the container (here its agent cannot reach the api, so it never
/// fetches its spec nor heartbeats) is terminated by the sweep once the boot timeout passes, and its
/// run goes back to `pending` and is launched again as the same attempt (not a retry): a second
/// provisioner, whose agents can reach the api, runs the user's code to its end, once, on an instance
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_starts_the_container_is_replaced_as_the_same_attempt() {
    let mut env = TestEnv::new();
    env.settings.reaper.boot_timeout_secs = 2;
    let image = image::busybox_image().await;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (job_id, run_id, first_instance) = booting_on_a_silent_instance(&env, &app, image).await;

    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = reaper.sweep_once().await.unwrap();
    assert_eq!((report.relaunched, report.lost), (1, 0), "{report:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.attempt, run.relaunches),
        (RunState::Pending, 1, 1)
    );
    assert_eq!(run.instance_id, None, "the run let go of the instance");
    assert!(
        run.relaunch_reasons[0].contains("never started the container"),
        "{run:?}"
    );
    let terminated = store.get_instance(&first_instance).await.unwrap().unwrap();
    assert_eq!(
        terminated.state,
        spot_shared::model::InstanceState::Terminated
    );
    assert!(
        local_agents_of(&first_instance).is_empty(),
        "its agent was stopped"
    );

    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let run = ended_run(&store, &run_id).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!((run.attempt, run.relaunches), (1, 1));
    let second_instance = run.instance_id.clone().unwrap_or_default();
    assert!(
        !second_instance.is_empty() && second_instance != first_instance,
        "{run:?}"
    );
    let runs = app.runs(&job_id).await;
    assert_eq!(runs.len(), 1, "one run of that instant, launched twice");
    assert_legal_history(&runs[0]);
    assert_eq!(
        app.run_log(&runs[0]).await,
        "ran\n",
        "the user's code ran once"
    );
}

/// A job whose run (now) is `booting` on an instance whose agent never gets going: the provisioner
/// that launched it told its agents an api address where nothing listens, and is stopped.
async fn booting_on_a_silent_instance(
    env: &TestEnv,
    app: &TestApp,
    image: &str,
) -> (String, String, String) {
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "schedule": "0 0 1 1 *",
                "runner": {"type": "container", "image": image, "cmd": "echo ran"},
                "policies": {"retries": {"max_attempts": 1}},
            }),
        )
        .await;
    // Agents of this provisioner are told an api address where nothing listens.
    let unreachable = spawn_provisioner(env, "http://127.0.0.1:9").await;
    app.run_now(&job_id).await;
    let (run_id, first_instance) = eventually(Duration::from_secs(30), "an instance", || async {
        let run = app.runs(&job_id).await.into_iter().next()?;
        let instance = run["instance_id"].as_str()?.to_string();
        Some((run["id"].as_str()?.to_string(), instance))
    })
    .await;
    unreachable.stop().await;
    (job_id, run_id, first_instance)
}

/// The run once it has ended (a minute at most).
async fn ended_run(store: &Store, run_id: &str) -> spot_shared::model::Run {
    eventually(Duration::from_secs(60), "the run to end", || async {
        let run = store.get_run(run_id).await.ok()??;
        run.state.is_terminal().then_some(run)
    })
    .await
}

/// Live agent processes tagged with this instance id.
fn local_agents_of(instance_id: &str) -> Vec<nix::unistd::Pid> {
    spot_shared::cloud::local::tagged_processes(std::path::Path::new("/proc"), instance_id)
}

/// The agent's interruption notice arrives before the container started (the cloud reclaims a spot
/// instance while it boots): not an attempt of the job. The api has the instance terminated and the
/// run launched again as the same attempt, and a later launch runs the user's code once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_instance_reclaimed_before_the_container_started_is_relaunched_not_retried() {
    let env = TestEnv::new();
    let image = image::busybox_image().await;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let (job_id, run_id, instance) = booting_on_a_silent_instance(&env, &app, image).await;
    // The agent's report, as it sends it on a notice (the test holds the run's secret).
    let secret = "the-agents-secret";
    store
        .set_run_fields(
            &run_id,
            &[("secret_hash", spot_shared::ids::hash_secret(secret))],
        )
        .await
        .unwrap();
    let report = json!({"action": "terminate", "instance_id": instance, "run_id": run_id,
        "job_id": job_id, "interrupted": true});
    let report_as_agent = || {
        app.client
            .post(app.url("/callback"))
            .header(spot_shared::messages::RUN_SECRET_HEADER, secret)
            .json(&report)
            .send()
    };
    let response = report_as_agent().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["relaunched"], true, "{answer}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.attempt, run.relaunches),
        (RunState::Pending, 1, 1)
    );
    assert!(run.relaunch_reasons[0].contains("reclaimed"), "{run:?}");
    // The old agent's secret no longer speaks for the run.
    assert_eq!(report_as_agent().await.unwrap().status(), 403);

    let _reaper = spawn_reaper(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let run = ended_run(&store, &run_id).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(
        (run.attempt, run.relaunches),
        (1, 1),
        "relaunched, never retried"
    );
    let old = store.get_instance(&instance).await.unwrap().unwrap();
    assert_eq!(old.state, spot_shared::model::InstanceState::Terminated);
    assert!(local_agents_of(&instance).is_empty());
    let runs = app.runs(&job_id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(app.run_log(&runs[0]).await, "ran\n");
}
