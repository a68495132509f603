//! Every service heals itself: RabbitMQ restarted, a node replaced by an empty one, queues wiped after
//! the timers were handed over, Redis killed and restarted. Each test breaks a real dependency on
//! purpose and checks that the services keep running, report the fault, refuse what needs the missing
//! dependency with 503 and change nothing, come back on their own, and lose no fire.
//!
//! A test binary of its own: the broker restart touches every vhost, and cargo runs test binaries
//! one after another. Inside it, the restart takes [`BROKER`] for writing; every other test, which
//! only breaks its own vhost or its own Redis, takes it for reading.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use spot_shared::config::Settings;
use spot_shared::messages::FireMessage;
use spot_shared::model::RunState;
use spot_shared::policy;
use spot_shared::store::Store;
use spot_tests::redis_server::RedisServer;
use spot_tests::*;
use tokio::sync::RwLock;

static BROKER: RwLock<()> = RwLock::const_new(());

fn dummy(schedule: &str) -> Value {
    json!({"schedule": schedule, "runner": {"type": "dummy", "template": "hi {{.Account}}"}})
}

fn in_secs(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

async fn health(app: &TestApp) -> (u16, Value) {
    let response = app.get("/healthcheck", "").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The api, a provisioner and a reaper in the test's env, with the reconciler on its default period.
struct Stack {
    app: TestApp,
    provisioner: Running,
    reaper: Running,
}

async fn spawn_stack(env: &TestEnv) -> Stack {
    let mut settings = env.settings.clone();
    let defaults = Settings::defaults().provisioner;
    settings.provisioner.reconcile_interval_secs = defaults.reconcile_interval_secs;
    settings.provisioner.reconcile_grace_secs = defaults.reconcile_grace_secs;
    let app = spawn_app_with(settings.clone()).await;
    let provisioner = spawn_provisioner_with(settings, &app.address).await;
    let reaper = spawn_reaper(env).await;
    Stack {
        app,
        provisioner,
        reaper,
    }
}

impl Stack {
    fn all_running(&self) -> bool {
        self.app.service.is_running() && self.provisioner.is_running() && self.reaper.is_running()
    }

    async fn wait_healthy(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        eventually(limit, "/healthcheck to be live again", || async {
            (health(&self.app).await.0 == 200).then_some(())
        })
        .await;
        start.elapsed()
    }

    async fn wait_runs(&self, job_id: &str, count: usize, limit: Duration) -> Vec<Value> {
        eventually(
            limit,
            &format!("{count} ended run(s) of {job_id}"),
            || async {
                let runs = self.app.runs(job_id).await;
                let ended = runs
                    .iter()
                    .filter(|run| run["state"] == "succeeded")
                    .count();
                (ended >= count).then_some(runs)
            },
        )
        .await
    }
}

/// What a broker outage must look like from outside: services up, health degraded naming RabbitMQ,
/// then live again; a run-now asked for during the outage is kept (it is written to Redis) and fires
/// after; a job scheduled after the outage fires.
async fn outage_and_recovery(env: &TestEnv, stack: &Stack, recover: impl FnOnce()) {
    let job = stack.app.create_job(ACCOUNT_KEY, dummy("0 0 1 1 *")).await;
    eventually(
        Duration::from_secs(20),
        "health to show RabbitMQ gone",
        || async {
            let (status, body) = health(&stack.app).await;
            (status == 503 && body["rabbitmq"] != "ok").then_some(())
        },
    )
    .await;
    let asked = stack
        .app
        .post_raw(&format!("/v1/jobs/{job}/run"), ACCOUNT_KEY, "")
        .await;
    assert_eq!(asked.status(), 202, "a run-now needs only Redis");

    recover();
    let healed = stack.wait_healthy(Duration::from_secs(30)).await;
    eprintln!(
        "{}: healthy again {healed:?} after the broker's return",
        env.name
    );
    let runs = stack.wait_runs(&job, 1, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 1, "the run-now fired once: {runs:?}");

    let later = stack.app.create_job(ACCOUNT_KEY, dummy(&in_secs(2))).await;
    stack.wait_runs(&later, 1, Duration::from_secs(30)).await;
    a_container_runs_and_the_reaper_terminates_its_instance(env, stack).await;
    assert!(stack.all_running(), "no service exited");
}

/// The whole path works after an outage, the reaper's part included: a container job runs to its
/// end, and the reaper (whose terminate queue went through the outage) terminates its instance.
async fn a_container_runs_and_the_reaper_terminates_its_instance(env: &TestEnv, stack: &Stack) {
    let image = image::busybox_image().await;
    let body = json!({"schedule": in_secs(1), "runner": {"type": "container", "image": image, "cmd": "true"}});
    let job = stack.app.create_job(ACCOUNT_KEY, body).await;
    let runs = stack.wait_runs(&job, 1, Duration::from_secs(60)).await;
    let instance_id = runs[0]["instance_id"]
        .as_str()
        .expect("the run's instance")
        .to_string();
    let store = env.store().await;
    eventually(
        Duration::from_secs(30),
        "the reaper to terminate the instance",
        || async {
            let instance = store.get_instance(&instance_id).await.ok()??;
            (instance.state == spot_shared::model::InstanceState::Terminated).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_heals_after_a_rabbitmq_restart() {
    let _broker = BROKER.write().await;
    let env = TestEnv::new();
    let stack = spawn_stack(&env).await;
    stack.wait_healthy(Duration::from_secs(10)).await;

    rabbitmqctl(&["stop_app"]);
    outage_and_recovery(&env, &stack, || {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_heals_when_its_node_is_replaced_by_an_empty_one() {
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let stack = spawn_stack(&env).await;
    stack.wait_healthy(Duration::from_secs(10)).await;

    // Every connection closed, every exchange, queue and binding gone; refused until it is back.
    env.delete_vhost();
    outage_and_recovery(&env, &stack, || env.make_vhost()).await;
}

/// Timers handed to RabbitMQ, then the queues holding them deleted: the reconciler, on its default
/// period, finds them overdue in Redis and hands them over again; every job fires exactly once.
/// No provisioner had left its marker in the broker (the pump is driven by hand), so the one started
/// after the wipe takes the broker as new and leaves the healing to the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fires_lost_with_wiped_queues_after_the_handover_are_healed_by_the_reconciler() {
    const JOBS: usize = 1000;
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let due = Utc::now() + chrono::Duration::seconds(15);
    let due_text = due.to_rfc3339();
    let jobs: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|_| app.create_job(ACCOUNT_KEY, dummy(&due_text)))
        .buffer_unordered(32)
        .collect()
        .await;

    // A provisioner's pump hands every timer over once within its horizon; nobody consumes yet.
    let pump = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    let horizon = pump.pump_horizon().0;
    tokio::time::sleep(
        (due - horizon - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
    .await;
    let mut handed = 0;
    while handed < JOBS {
        handed += pump.pump_once().await.unwrap();
    }
    drop(pump);
    // They wait in the timer levels now (a 15 s delay: levels 3 to 0), with the queues deleted.
    assert!(env.wipe_queues() > 0, "the queues existed");

    // Now a whole provisioner, on the default reconcile period and grace.
    let wiped_at = Instant::now();
    let mut settings = env.settings.clone();
    let defaults = Settings::defaults().provisioner;
    settings.provisioner.reconcile_interval_secs = defaults.reconcile_interval_secs;
    settings.provisioner.reconcile_grace_secs = defaults.reconcile_grace_secs;
    let provisioner = spawn_provisioner_with(settings, &app.address).await;
    let limit = Duration::from_secs(defaults.reconcile_grace_secs + 45);
    eventually(limit, "every lost fire to be healed", || async {
        (count_runs(&store, &jobs).await? >= JOBS).then_some(())
    })
    .await;
    eprintln!(
        "{}: {JOBS} lost fires healed {:?} after the wipe",
        env.name,
        wiped_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for job in &jobs {
        assert_eq!(
            store.job_run_ids(job, 0).await.unwrap().len(),
            1,
            "{job} fired once"
        );
    }
    assert!(provisioner.is_running());
}

/// Queues wiped under a running provisioner, with every timer of the next seconds in them: once its
/// link is made again it hands those fires back to the pump itself, so they fire on time, each once,
/// with a reconcile grace far too long to have helped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fires_lost_with_queues_wiped_under_a_provisioner_still_fire_on_time() {
    lost_timers_fire_on_time(|env| env.wipe_queues()).await;
}

/// Only the timer levels deleted (the end of a wipe that began before the provisioner made its link
/// again): nothing consumes a level, so no consumer is cancelled; the provisioner's check of the
/// topology finds the levels gone, makes its link again and re-arms, and the fires are on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timer_levels_deleted_under_a_provisioner_are_noticed_and_their_fires_on_time() {
    lost_timers_fire_on_time(|env| env.delete_queues_where(|name| name.contains(".timer.level")))
        .await;
}

/// 300 jobs due in 20 s, their timers handed to RabbitMQ; then `lose` deletes queues holding them.
/// Each job must fire once and under 5 s late, with a reconcile grace of 600 s.
async fn lost_timers_fire_on_time(lose: impl Fn(&TestEnv) -> usize) {
    const JOBS: usize = 300;
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let store = env.store().await;
    let (_, app, provisioner) = spawn_with_a_long_grace(&env).await;
    // Due within the pump's horizon: handed over at once.
    let jobs = create_jobs_handed_over(&app, &store, JOBS, 20).await;
    assert!(lose(&env) > 0, "the queues existed");

    fired_once_and_on_time(&store, &jobs).await;
    assert!(provisioner.is_running());
}

/// The queues wiped while no provisioner was linked (all of them stopped, as in a deploy, or
/// RabbitMQ's node replaced in a maintenance window), then declared again, empty, before any
/// provisioner came back (as the api's or the reaper's next link does): the next provisioner's first
/// link finds the marker its predecessor left gone, hands the lost fires back to the pump at once,
/// and they fire on time, each once, with a reconcile grace of 600 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_lost_while_no_provisioner_was_linked_fire_on_time() {
    const JOBS: usize = 300;
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let store = env.store().await;
    let (settings, app, provisioner) = spawn_with_a_long_grace(&env).await;
    let broker = env.broker().await;
    let marker = the_marker_left(&broker).await;
    let jobs = create_jobs_handed_over(&app, &store, JOBS, 20).await;

    provisioner.stop().await;
    assert!(env.wipe_queues() > 0, "the queues existed");
    broker.declare_topology().await.unwrap();
    let provisioner = spawn_provisioner_with(settings, &app.address).await;

    fired_once_and_on_time(&store, &jobs).await;
    assert_eq!(
        broker.message_count(&marker).await.unwrap(),
        1,
        "left again"
    );
    assert!(provisioner.is_running());
}

/// A provisioner restarted on a broker that lost nothing hands nothing back: the marker is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioner_restarted_on_an_intact_broker_hands_nothing_back() {
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let broker = env.broker().await;
    let marker = the_marker_left(&broker).await;
    let jobs = create_jobs_handed_over(&app, &store, 20, 10).await;
    provisioner.stop().await;

    let built = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    built
        .broker()
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(built.check_broker_after_link(false).await.unwrap(), None);
    let provisioner = run_provisioner(built);
    eventually(Duration::from_secs(30), "every fire recorded", || async {
        (count_runs(&store, &jobs).await? >= jobs.len()).then_some(())
    })
    .await;
    let events = store.event_counts().await.unwrap();
    assert_eq!(events.get("rearmed_after_link_loss"), None);
    assert_eq!(broker.message_count(&marker).await.unwrap(), 1);
    provisioner.stop().await;
}

/// The api and a provisioner whose reconcile grace (600 s) is far too long to heal anything within
/// a test's limits: what comes back in time, the provisioner handed back itself.
async fn spawn_with_a_long_grace(env: &TestEnv) -> (Settings, TestApp, Running) {
    let mut settings = env.settings.clone();
    settings.provisioner.reconcile_grace_secs = 600;
    let app = spawn_app_with(settings.clone()).await;
    let provisioner = spawn_provisioner_with(settings.clone(), &app.address).await;
    (settings, app, provisioner)
}

/// Waits for the marker a provisioner leaves in the broker; returns the marker queue's name.
async fn the_marker_left(broker: &spot_shared::broker::Broker) -> String {
    let marker = broker.topology().state_marker();
    eventually(Duration::from_secs(10), "the marker left", || async {
        (broker.message_count(&marker).await.ok()? == 1).then_some(())
    })
    .await;
    marker
}

/// `count` dummy jobs due in `secs`, once the pump has handed every one of them to RabbitMQ (with
/// a moment for the publishes' confirms).
async fn create_jobs_handed_over(
    app: &TestApp,
    store: &Store,
    count: usize,
    secs: i64,
) -> Vec<String> {
    let due_text = in_secs(secs);
    let jobs: Vec<String> = futures::stream::iter(0..count)
        .map(|_| app.create_job(ACCOUNT_KEY, dummy(&due_text)))
        .buffer_unordered(32)
        .collect()
        .await;
    eventually(
        Duration::from_secs(15),
        "the timers taken by the pump",
        || async { (store.unarmed_count().await.ok()? == 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    jobs
}

/// Each of `jobs` fires once and under 5 s late, brought back by a provisioner's hand-back (the
/// tests set the reconcile grace to 600 s).
async fn fired_once_and_on_time(store: &Store, jobs: &[String]) {
    eventually(Duration::from_secs(40), "every fire recorded", || async {
        (count_runs(store, jobs).await? >= jobs.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latest = chrono::Duration::zero();
    for job in jobs {
        let runs = store.job_run_ids(job, 0).await.unwrap();
        assert_eq!(runs.len(), 1, "{job} fired once");
        let run = store.get_run(&runs[0]).await.unwrap().unwrap();
        let recorded = *run.transitions.values().min().unwrap();
        latest = latest.max(recorded - run.scheduled_at);
    }
    assert!(
        latest < chrono::Duration::seconds(5),
        "the lost fires were late by {latest} (the reconciler would have taken 600 s)"
    );
    let events = store.event_counts().await.unwrap();
    assert!(events.get("rearmed_after_link_loss").copied().unwrap_or(0) >= jobs.len() as u64);
}

/// A RabbitMQ cluster's node that does not answer: the services try the next node of
/// `rabbitmq.other_urls` and run as if nothing were wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_whose_first_node_does_not_answer_use_the_next() {
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let mut settings = env.settings.clone();
    let real = settings.rabbitmq.url.clone();
    // A port nothing listens on, as a node that is down.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    settings.rabbitmq.url = secrecy::SecretString::from(format!(
        "amqp://guest:guest@127.0.0.1:{dead_port}/{}",
        env.name
    ));
    settings.rabbitmq.other_urls = vec![real];
    let app = spawn_app_with(settings.clone()).await;
    let provisioner = spawn_provisioner_with(settings, &app.address).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    let job = app.create_job(ACCOUNT_KEY, dummy(&in_secs(2))).await;
    let store = env.store().await;
    eventually(Duration::from_secs(20), "the job fired", || async {
        (store.job_run_ids(&job, 0).await.ok()?.len() == 1).then_some(())
    })
    .await;
    assert!(provisioner.is_running());
}

/// A job with a fire recorded as a pending run, as the provisioner records one.
async fn recorded_run(store: &Store, app: &TestApp, body: Value) -> (String, String) {
    let job_id = app.create_job(ACCOUNT_KEY, body).await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let record = store
        .record_fire(&job, job.generation, Utc::now(), 1)
        .await
        .unwrap();
    let spot_shared::store::FireRecord::New(run_id) = record else {
        panic!("a new run: {record:?}");
    };
    (job_id, run_id)
}

/// A retry is written with the end of the run it retries, in one Redis step; the broker losing it
/// after the handover delays it and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_is_recorded_with_its_run_and_survives_a_wiped_broker() {
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let mut body = dummy("0 0 1 1 *");
    body["policies"] =
        json!({"retries": {"max_attempts": 2, "backoff_secs": 1, "backoff_max_secs": 1}});
    let (job_id, run_id) = recorded_run(&store, &app, body).await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    store
        .advance_run(&run_id, RunState::Provisioning, &[])
        .await
        .unwrap();
    policy::end_run(
        &store,
        Some(&job),
        &run,
        RunState::ProvisionFailed,
        &[("error", "no capacity".into())],
    )
    .await
    .unwrap();
    let waiting = store.delayed_fires(10).await.unwrap();
    assert_eq!(waiting.len(), 1, "the retry is in Redis: {waiting:?}");
    assert_eq!(
        waiting[0].fire,
        FireMessage {
            attempt: 2,
            // Instants travel in milliseconds.
            ..FireMessage::scheduled(
                &job_id,
                job.generation,
                chrono::DateTime::from_timestamp_millis(run.scheduled_at.timestamp_millis())
                    .unwrap()
            )
        }
    );

    // Handed to RabbitMQ, then lost with the queues.
    let pump = spot_provisioner::Provisioner::build(env.settings.clone())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the retry to be handed over",
        || async { (pump.pump_once().await.ok()? == 1).then_some(()) },
    )
    .await;
    drop(pump);
    env.wipe_queues();

    let mut settings = env.settings.clone();
    settings.provisioner.reconcile_interval_secs = 1;
    settings.provisioner.reconcile_grace_secs = 2;
    let _provisioner = spawn_provisioner_with(settings, &app.address).await;
    let runs = eventually(Duration::from_secs(30), "the retry to run", || async {
        let runs = app.runs(&job_id).await;
        (runs.len() == 2).then_some(runs)
    })
    .await;
    assert_eq!(runs[0]["attempt"], 2);
    assert_eq!(runs[0]["state"], "succeeded");
    eventually(
        Duration::from_secs(10),
        "the retry to leave Redis",
        || async { store.delayed_fires(10).await.ok()?.is_empty().then_some(()) },
    )
    .await;
}

/// Redis killed and started again (its append-only file keeps what was written): the services stay
/// up, answer 503 naming Redis meanwhile without storing anything, and work again on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_heals_after_a_redis_restart() {
    let _broker = BROKER.read().await;
    let mut redis = RedisServer::start().await;
    let mut env = TestEnv::new();
    env.settings.redis.url = secrecy::SecretString::from(redis.url());
    let stack = spawn_stack(&env).await;
    stack.wait_healthy(Duration::from_secs(10)).await;
    let before = stack.app.create_job(ACCOUNT_KEY, dummy("0 0 1 1 *")).await;

    redis.kill();
    let (status, body) = health(&stack.app).await;
    assert_eq!(status, 503);
    assert_ne!(body["redis"], "ok", "{body}");
    let refused = stack
        .app
        .post_raw("/v1/jobs", ACCOUNT_KEY, &dummy(&in_secs(1)).to_string())
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let reply: Value = refused.json().await.unwrap();
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Redis is unavailable"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stack.all_running(),
        "no service exited while Redis was down"
    );

    redis.restart().await;
    let healed = stack.wait_healthy(Duration::from_secs(20)).await;
    eprintln!(
        "{}: healthy again {healed:?} after Redis's return",
        env.name
    );
    let jobs = stack.app.get("/v1/jobs", ACCOUNT_KEY).await;
    let listed: Value = jobs.json().await.unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|job| job["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [before.as_str()],
        "the job kept, the refused one not stored"
    );
    let later = stack.app.create_job(ACCOUNT_KEY, dummy(&in_secs(2))).await;
    stack.wait_runs(&later, 1, Duration::from_secs(30)).await;
    a_container_runs_and_the_reaper_terminates_its_instance(&env, &stack).await;
    assert!(stack.all_running());
}

/// A provisioner stopped in the middle of a timer pump round (the timers taken out of Redis, the
/// answer not back yet: its link to Redis made slow on purpose) ends the round first, so a
/// provisioner started after fires every one of them, once, with no reconciler to hand lost timers
/// back (its period is an hour here). Stopped mid-round, they were left taken and never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioner_stopped_mid_pump_round_leaves_no_timer_behind() {
    use spot_tests::fault_proxy::FaultProxy;
    let _broker = BROKER.read().await;
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let redis_url = secrecy::ExposeSecret::expose_secret(&env.settings.redis.url).to_string();
    let (slow_link, slow_url) = FaultProxy::in_front_of(&redis_url).await;
    let mut slow_settings = env.settings.clone();
    slow_settings.redis.url = secrecy::SecretString::from(slow_url);
    let provisioner = spawn_provisioner_with(slow_settings, &app.address).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let unarmed = env.plain_key("timers:unarmed");
    slow_link.slow_down(Duration::from_millis(1500), Duration::ZERO);
    let jobs: Vec<String> = futures::future::join_all(
        (0..12).map(|_| app.create_job(ACCOUNT_KEY, dummy(&in_secs(15)))),
    )
    .await;
    let waiting: usize = env.raw_query(redis::cmd("ZCARD").arg(&unarmed));
    assert_eq!(waiting, jobs.len(), "the timers wait to be taken");
    // Taken in Redis; the answer is on its way back, 1.5 s slow.
    eventually(
        Duration::from_secs(15),
        "the pump to take the timers",
        || async {
            let left: usize = env.raw_query(redis::cmd("ZCARD").arg(&unarmed));
            (left == 0).then_some(())
        },
    )
    .await;
    provisioner.stop().await;
    drop(slow_link);

    let _provisioner = spawn_provisioner(&env, &app.address).await;
    for job in &jobs {
        let runs = eventually(Duration::from_secs(30), "the job's one run", || async {
            let runs = app.runs(job).await;
            (!runs.is_empty()).then_some(runs)
        })
        .await;
        assert_eq!(runs.len(), 1, "{job}: {runs:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for job in &jobs {
        assert_eq!(app.runs(job).await.len(), 1, "{job} ran once");
    }
}

/// An api left idle while Redis restarts answers the first request after it: the closed connection
/// is noticed when Redis closes it, not by a user's request failing on it. Twice: Redis back within
/// a moment, and Redis down for longer than the reconnect's own tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_api_answers_the_first_request_after_a_redis_restart() {
    let _broker = BROKER.read().await;
    let mut redis = RedisServer::start().await;
    let mut env = TestEnv::new();
    env.settings.redis.url = secrecy::SecretString::from(redis.url());
    let app = spawn_app(&env).await;
    let job = app.create_job(ACCOUNT_KEY, dummy("0 0 1 1 *")).await;
    for down_for in [Duration::ZERO, Duration::from_secs(4)] {
        redis.kill();
        tokio::time::sleep(down_for).await;
        redis.restart().await;
        // Redis answers again; give the api a moment to see it, as a user would not be first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let read = app.get(&format!("/v1/jobs/{job}"), ACCOUNT_KEY).await;
        assert_eq!(
            read.status(),
            200,
            "down for {down_for:?}: {:?}",
            read.text().await
        );
        let created = app
            .post_raw("/v1/jobs", ACCOUNT_KEY, &dummy("0 0 1 1 *").to_string())
            .await;
        assert_eq!(created.status(), 201, "down for {down_for:?}");
    }
}

/// Every service starts while neither Redis nor RabbitMQ answers (both reached through fault proxies
/// that refuse every connection), stays up answering 503 meanwhile, and works once they answer: a
/// job created then fires once. Services started by an orchestrator before their dependencies must
/// not crash-loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_start_while_redis_and_rabbitmq_are_down_and_work_once_they_answer() {
    use spot_tests::fault_proxy::FaultProxy;
    let _broker = BROKER.read().await;
    let mut env = TestEnv::new();
    let redis_url = secrecy::ExposeSecret::expose_secret(&env.settings.redis.url).to_string();
    let amqp_url = secrecy::ExposeSecret::expose_secret(&env.settings.rabbitmq.url).to_string();
    let (redis_proxy, redis_url) = FaultProxy::in_front_of(&redis_url).await;
    let (amqp_proxy, amqp_url) = FaultProxy::in_front_of(&amqp_url).await;
    redis_proxy.cut();
    amqp_proxy.cut();
    env.settings.redis.url = secrecy::SecretString::from(redis_url);
    env.settings.rabbitmq.url = secrecy::SecretString::from(amqp_url);

    let stack = spawn_stack(&env).await;
    let (status, body) = health(&stack.app).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["redis"], "ok", "{body}");
    assert_ne!(body["rabbitmq"], "ok", "{body}");
    let refused = stack
        .app
        .post_raw("/v1/jobs", ACCOUNT_KEY, &dummy(&in_secs(1)).to_string())
        .await;
    assert_eq!(refused.status(), 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stack.all_running(),
        "no service exited while both were down"
    );

    redis_proxy.restore();
    amqp_proxy.restore();
    let healed = stack.wait_healthy(Duration::from_secs(30)).await;
    eprintln!("{}: healthy {healed:?} after both answered", env.name);
    let job = stack.app.create_job(ACCOUNT_KEY, dummy(&in_secs(2))).await;
    let runs = stack.wait_runs(&job, 1, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(stack.all_running());
}

/// A reaper stopped (SIGTERM) while it terminates instances hands the requests it holds back to
/// RabbitMQ once its grace is over, exits cleanly, and another reaper finishes them. The "agents"
/// here ignore SIGTERM, so each termination takes the 10 s the local provider waits before SIGKILL,
/// far past the stopping reaper's 1 s grace. Nothing else terminates them: the runs are healthy, so
/// no sweep touches their instances; had the first reaper acknowledged the requests it dropped, the
/// instances would stay `terminating`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reaper_stopped_mid_work_hands_its_requests_back() {
    use spot_shared::messages::TerminateRequest;
    use spot_shared::model::{Instance, InstanceState};
    let _broker = BROKER.read().await;
    let mut env = TestEnv::new();
    env.settings.reaper.sweep_interval_secs = 3600;
    let store = env.store().await;
    let broker = env.broker().await;
    let app = spawn_app(&env).await;
    let job_id = app.create_job(ACCOUNT_KEY, dummy("0 0 1 1 *")).await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();

    let mut agents = Vec::new();
    let mut instances = Vec::new();
    for n in 0..3 {
        let instant = Utc::now() + chrono::Duration::seconds(n);
        let run_id = match store
            .record_fire(&job, job.generation, instant, 1)
            .await
            .unwrap()
        {
            spot_shared::store::FireRecord::New(run_id) => run_id,
            other => panic!("a new run: {other:?}"),
        };
        let instance_id = format!("local-{run_id}-1");
        store
            .create_instance(&Instance {
                id: instance_id.clone(),
                run_id: run_id.clone(),
                provider: "local".into(),
                state: InstanceState::Running,
                lifecycle: Some("local".into()),
                ready: true,
                transitions: [(InstanceState::Requested, Utc::now())].into(),
                ..Instance::default()
            })
            .await
            .unwrap();
        for state in [RunState::Provisioning, RunState::Booting, RunState::Running] {
            let fields = [
                ("instance_id", instance_id.clone()),
                ("heartbeat_at", Utc::now().to_rfc3339()),
            ];
            store.advance_run(&run_id, state, &fields).await.unwrap();
        }
        // An agent that will not stop on SIGTERM, tagged as the local provider tags its agents.
        agents.push(
            std::process::Command::new("sh")
                .args(["-c", "trap '' TERM; while :; do sleep 1; done", "agent"])
                .args(["--instance-id", &instance_id, "--cluster", &env.name])
                .spawn()
                .expect("sh runs"),
        );
        instances.push((instance_id, run_id));
    }

    let mut first = ServiceProcess::start_as(
        &env,
        "spot-reaper",
        "reaper-1",
        &[
            ("SPOT__REAPER__SHUTDOWN_GRACE_SECS", "1"),
            ("SPOT__REAPER__SWEEP_INTERVAL_SECS", "3600"),
        ],
    );
    for (instance_id, run_id) in &instances {
        let request = TerminateRequest {
            instance_id: instance_id.clone(),
            run_id: run_id.clone(),
            reason: "test".into(),
            stop_grace_secs: 0,
        };
        broker.request_terminate(&request).await.unwrap();
    }
    let state_of = |id: String| {
        let store = store.clone();
        async move {
            store
                .get_instance(&id)
                .await
                .ok()
                .flatten()
                .map(|i| i.state)
        }
    };
    for (instance_id, _) in &instances {
        eventually(Duration::from_secs(30), "reaper 1 at work", || {
            let state = state_of(instance_id.clone());
            async move { (state.await == Some(InstanceState::Terminating)).then_some(()) }
        })
        .await;
    }

    let stopped_at = Instant::now();
    let pid = nix::unistd::Pid::from_raw(first.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(status) = first.exited() {
            break status;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(8),
            "reaper 1 did not exit within 8 s of SIGTERM (its grace is 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "a clean exit: {status}");
    for (instance_id, _) in &instances {
        assert_eq!(
            state_of(instance_id.clone()).await,
            Some(InstanceState::Terminating),
            "not finished by the reaper that stopped"
        );
    }

    let second = spawn_reaper(&env).await;
    for (instance_id, _) in &instances {
        eventually(Duration::from_secs(40), "reaper 2 to finish it", || {
            let state = state_of(instance_id.clone());
            async move { (state.await == Some(InstanceState::Terminated)).then_some(()) }
        })
        .await;
    }
    // Terminated means killed: each agent is gone (SIGKILL after its 10 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    for agent in &mut agents {
        while agent.try_wait().expect("the agent's status").is_none() {
            assert!(
                Instant::now() < deadline,
                "agent {} still alive",
                agent.id()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    second.stop().await;
}
