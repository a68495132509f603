//! Array jobs (`runner.array_size`, `array_parallelism`): each fire makes N copies, each a run with
//! `SPOT_ARRAY_INDEX`, its own instance, retries and cost, at most `array_parallelism` under way;
//! the fire's own run is derived from theirs. Each copy's code runs once however often the fire is
//! delivered, with the provisioner and the reaper killed while copies run and the step a crash
//! lost taken by the reaper's sweep; a replaced fire stops its copies gracefully; deleting the job
//! deletes every copy; bad arrays are refused naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use spot_shared::messages::FireMessage;
use spot_shared::store::FireRecord;
use spot_tests::image::busybox_image;
use spot_tests::*;

async fn children(app: &TestApp, parent: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/runs/{parent}/children"), ACCOUNT_KEY)
        .await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    reply["children"].as_array().cloned().unwrap_or_default()
}

async fn run(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/runs/{id}"), ACCOUNT_KEY).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The api, a provisioner and a reaper on the test's own prefix and vhost, and the busybox image.
struct Stack {
    // Dropped first: the services stop before their keys and vhost go.
    _services: [Running; 2],
    app: TestApp,
    store: spot_shared::store::Store,
    image: &'static str,
    env: TestEnv,
}

impl Stack {
    async fn start() -> Stack {
        let env = TestEnv::new();
        let app = spawn_app(&env).await;
        let services = [
            spawn_provisioner(&env, &app.address).await,
            spawn_reaper(&env).await,
        ];
        Stack {
            _services: services,
            store: env.store().await,
            image: busybox_image().await,
            app,
            env,
        }
    }
}

/// The job's one run once it has ended.
async fn ended_parent(app: &TestApp, job_id: &str) -> Value {
    eventually(
        Duration::from_secs(180),
        "the array fire to end",
        || async {
            let runs = app.runs(job_id).await;
            runs.first().filter(|run| ended(run).is_some()).cloned()
        },
    )
    .await
}

/// The most runs under way at one instant, from each run's pending to its end.
fn most_at_once(runs: &[Value]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for run in runs {
        let start = entered(run, "pending").expect("a started copy");
        edges.push((start, 1));
        edges.push((ended(run).expect("an ended copy"), -1));
    }
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_array_fire_runs_each_index_on_its_own_instance_parallelism_at_a_time() {
    let stack = Stack::start().await;
    let (env, app, store, image) = (&stack.env, &stack.app, &stack.store, stack.image);
    let after = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "after"}}),
        )
        .await;
    // Index 3 fails its first attempt; its retry is told the attempt it follows.
    let cmd = "sh -c 'echo index=$SPOT_ARRAY_INDEX/$SPOT_ARRAY_SIZE attempt=$SPOT_ATTEMPT \
        previous=$SPOT_PREVIOUS_RUN_ID; sleep 1; [ $SPOT_ARRAY_INDEX$SPOT_ATTEMPT != 31 ] || exit 3'";
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly",
                "runner": {"type": "container", "image": image, "cmd": cmd,
                    "array_size": 5, "array_parallelism": 2},
                "policies": {"retries": {"max_attempts": 2, "backoff_secs": 1, "backoff_max_secs": 1},
                    "on_success": [after]}}),
        )
        .await;
    app.run_now(&job_id).await;

    let parent = ended_parent(app, &job_id).await;
    assert_eq!(parent["state"], "succeeded", "{parent}");
    assert_eq!(parent["array_size"], 5);
    assert_eq!(parent["array_succeeded"], 5, "{parent}");
    assert_eq!(parent["array_failed"], 0);
    assert_eq!(
        app.runs(&job_id).await.len(),
        1,
        "the copies are not the job's runs"
    );
    let parent_id = parent["id"].as_str().unwrap();

    let copies = children(app, parent_id).await;
    assert_eq!(copies.len(), 5);
    let mut every_attempt = Vec::new();
    let mut instances = std::collections::BTreeSet::new();
    for (index, copy) in copies.iter().enumerate() {
        assert_eq!(copy["array_index"], index, "{copy}");
        assert_eq!(copy["array_parent"], parent_id);
        assert_eq!(copy["state"], "succeeded", "{copy}");
        assert_legal_history(copy);
        instances.insert(copy["instance_id"].as_str().unwrap().to_string());
        let log = app.run_log(copy).await;
        let attempt = copy["attempt"].as_u64().unwrap();
        if index == 3 {
            assert_eq!(attempt, 2, "{copy}");
            let first_id = copy["previous_run"]
                .as_str()
                .expect("the attempt it follows");
            let first = run(app, first_id).await;
            assert_eq!(first["state"], "failed");
            assert_eq!(first["exit_code"], 3);
            assert!(log.contains(&format!("previous={first_id}")), "{log}");
            instances.insert(first["instance_id"].as_str().unwrap().to_string());
            // The retry delivered again records nothing more.
            let job = store.get_job(&job_id).await.unwrap().unwrap();
            let first_run = store.get_run(first_id).await.unwrap().unwrap();
            assert_eq!(
                store
                    .record_array_retry(&job, &first_run, 2, 0)
                    .await
                    .unwrap(),
                FireRecord::Existing(copy["id"].as_str().unwrap().to_string())
            );
            every_attempt.push(first);
        } else {
            assert_eq!(attempt, 1, "{copy}");
        }
        assert!(
            log.starts_with(&format!("index={index}/5 attempt={attempt}")),
            "{log}"
        );
        every_attempt.push(copy.clone());
    }
    assert_eq!(instances.len(), 6, "every attempt on its own instance");
    let table = spotctl_output(env, app, ACCOUNT_KEY, &["children", parent_id]).await;
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{table}");
    assert!(rows.iter().all(|row| row.contains("succeeded")), "{table}");
    assert!(most_at_once(&every_attempt) <= 2, "{every_attempt:?}");

    // The fire chains once, not once per copy.
    let chained = eventually(Duration::from_secs(30), "the chained run", || async {
        app.runs(&after)
            .await
            .first()
            .filter(|r| ended(r).is_some())
            .cloned()
    })
    .await;
    assert_eq!(chained["state"], "succeeded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.runs(&after).await.len(), 1);

    // Deleting the job deletes every copy of every attempt, and its array's keys.
    let response = app
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{job_id}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert!(response.status().is_success());
    for attempt in &every_attempt {
        let id = attempt["id"].as_str().unwrap();
        assert_eq!(
            app.get(&format!("/v1/runs/{id}"), ACCOUNT_KEY)
                .await
                .status(),
            404
        );
    }
    let (_, left) = env.raw_keys(&format!("run:{parent_id}")).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_copy_runs_once_however_often_the_fire_comes_and_whatever_service_dies() {
    let mut env = TestEnv::new();
    let app = spawn_app(&env).await;
    env.overrides
        .push(("SPOT__API__PUBLIC_URL".into(), app.address.clone()));
    let store = env.store().await;
    let image = busybox_image().await;
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly",
                "runner": {"type": "container", "image": image,
                    "cmd": "sh -c 'echo ran $SPOT_ARRAY_INDEX; sleep 3'",
                    "array_size": 4, "array_parallelism": 2}}),
        )
        .await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();

    // A provisioner records the fire and half its copies and dies; two deliveries at once record
    // the rest, once; then they die before starting any.
    let parent_id = match store
        .record_fire(&job, job.generation, at, 1)
        .await
        .unwrap()
    {
        FireRecord::New(id) => id,
        other => panic!("{other:?}"),
    };
    let parent = store.get_run(&parent_id).await.unwrap().unwrap();
    assert_eq!(
        store
            .expand_step(&job, &parent, (4, 2), 0, 2)
            .await
            .unwrap(),
        2
    );
    let (first, second) = tokio::join!(
        store.expand_array(&job, &parent),
        store.expand_array(&job, &parent)
    );
    assert!(
        first.unwrap() ^ second.unwrap(),
        "one of them recorded the last copies"
    );
    assert!(!store.expand_array(&job, &parent).await.unwrap(), "once");
    let states = |copies: &[Value]| -> BTreeMap<String, usize> {
        copies.iter().fold(BTreeMap::new(), |mut counts, copy| {
            *counts
                .entry(copy["state"].as_str().unwrap().to_string())
                .or_default() += 1;
            counts
        })
    };
    assert_eq!(
        states(&children(&app, &parent_id).await),
        BTreeMap::from([("queued".into(), 4)])
    );

    // The sweep takes the step it never took: two copies start.
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    assert_eq!(reaper.sweep_once().await.unwrap().queued_started, 2);
    assert_eq!(reaper.sweep_once().await.unwrap().queued_started, 0);

    // The fire delivered twice more at once: nothing more is recorded or started.
    let fire = FireMessage {
        manual: true,
        ..FireMessage::scheduled(&job_id, job.generation, at)
    };
    let mut settings = env.settings.clone();
    settings.api.public_url = app.address.clone();
    let deliverer = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();
    let (first, second) = tokio::join!(deliverer.handle_fire(&fire), deliverer.handle_fire(&fire));
    first.unwrap();
    second.unwrap();
    let copies = children(&app, &parent_id).await;
    assert_eq!(copies.len(), 4);
    assert_eq!(
        states(&copies),
        BTreeMap::from([("queued".into(), 2), ("pending".into(), 2)])
    );

    // A provisioner launches the copies and is killed while they run, and so is the reaper;
    // others take over.
    let doomed = ServiceProcess::start(&env, "spot-provisioner", &[]);
    let doomed_reaper = ServiceProcess::start(&env, "spot-reaper", &[]);
    eventually(Duration::from_secs(60), "a copy running", || async {
        let copies = children(&app, &parent_id).await;
        copies
            .iter()
            .any(|copy| copy["state"] == "running")
            .then_some(())
    })
    .await;
    doomed.kill();
    doomed_reaper.kill();
    // Delivered again after the crash: still nothing more.
    deliverer.handle_fire(&fire).await.unwrap();
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    let parent = ended_parent(&app, &job_id).await;
    assert_eq!(parent["state"], "succeeded", "{parent}");

    // Each index's code ran once, on its own instance, as its first attempt.
    let copies = children(&app, &parent_id).await;
    let mut instances = std::collections::BTreeSet::new();
    for (index, copy) in copies.iter().enumerate() {
        assert_eq!(copy["state"], "succeeded", "{copy}");
        assert_eq!(copy["attempt"], 1, "{copy}");
        assert_eq!(app.run_log(copy).await.trim(), format!("ran {index}"));
        instances.insert(copy["instance_id"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 4);
    assert!(most_at_once(&copies) <= 2, "{copies:?}");
    let (mut conn, keys) = env.raw_keys(&format!("run:{parent_id}:array:runs")).await;
    let recorded: usize = redis::cmd("SCARD")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, 4, "no copy recorded twice");
    // Delivered once more after the end: still one fire.
    deliverer.handle_fire(&fire).await.unwrap();
    assert_eq!(app.runs(&job_id).await.len(), 1);
    // (Each copy's cost lands once the reaper has priced its instance: compared apart from it.)
    let attempts = |copies: &[Value]| -> Vec<(Value, Value, Value)> {
        copies
            .iter()
            .map(|c| (c["id"].clone(), c["state"].clone(), c["attempt"].clone()))
            .collect()
    };
    assert_eq!(
        attempts(&children(&app, &parent_id).await),
        attempts(&copies)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arrays_are_refused_naming_the_field() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let container = |array: Value| {
        let mut runner = json!({"type": "container", "image": "busybox:local", "cmd": "true"});
        runner
            .as_object_mut()
            .unwrap()
            .extend(array.as_object().unwrap().clone());
        json!({"schedule": "@yearly", "runner": runner})
    };
    for (body, field, message) in [
        (
            container(json!({"array_size": 0})),
            "array_size",
            "must be 1 to 10000",
        ),
        (
            container(json!({"array_size": 10001})),
            "array_size",
            "must be 1 to 10000",
        ),
        (
            container(json!({"array_size": 3, "array_parallelism": 4})),
            "array_parallelism",
            "must be 1 to array_size (3)",
        ),
        (
            container(json!({"array_parallelism": 2})),
            "array_parallelism",
            "only an array job",
        ),
        (
            json!({"schedule": "@yearly", "policies": {"history_limit": 21},
                "runner": {"type": "container", "image": "busybox:local", "array_size": 10000}}),
            "policies.history_limit",
            "210000 copies, more than 200000",
        ),
        (
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t", "array_size": 2}}),
            "array_size",
            "unknown field",
        ),
    ] {
        let response = app
            .send(Method::POST, "/v1/jobs", ACCOUNT_KEY, Some(body))
            .await;
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(
            text.contains(field) && text.contains(message),
            "{field}: {text}"
        );
    }
    // A run that is no array fire has no children.
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "runner": {"type": "dummy", "template": "t"}}),
        )
        .await;
    let store = env.store().await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let FireRecord::New(run_id) = store
        .record_fire(&job, job.generation, Utc::now(), 1)
        .await
        .unwrap()
    else {
        panic!("recorded")
    };
    let response = app
        .get(&format!("/v1/runs/{run_id}/children"), ACCOUNT_KEY)
        .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("not an array fire"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_array_fire_stops_its_copies_gracefully_and_the_new_one_runs() {
    let stack = Stack::start().await;
    let (app, store, image) = (&stack.app, &stack.store, stack.image);
    let job_id = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": "@yearly", "policies": {"concurrency": "replace"},
                "runner": {"type": "container", "image": image, "stop_grace_secs": 5,
                    "array_size": 2,
                    "cmd": "sh -c 'trap \"echo checkpoint $SPOT_ARRAY_INDEX; exit 0\" TERM; \
                        echo started; sleep ${NAP:-600} & wait'"}}),
        )
        .await;
    app.run_now(&job_id).await;
    let first = eventually(Duration::from_secs(60), "both copies running", || async {
        let parent = app.runs(&job_id).await.into_iter().next()?;
        let copies = children(app, parent["id"].as_str()?).await;
        (copies.len() == 2 && copies.iter().all(|copy| copy["state"] == "running"))
            .then_some(parent)
    })
    .await;
    let first_id = first["id"].as_str().unwrap().to_string();

    // A newer fire, whose copies nap a second, replaces it.
    let response = app
        .send(
            Method::POST,
            &format!("/v1/jobs/{job_id}/run"),
            ACCOUNT_KEY,
            Some(json!({"env": ["NAP=1"]})),
        )
        .await;
    assert_eq!(response.status(), 202);
    let second = eventually(Duration::from_secs(90), "the newer fire to end", || async {
        let runs = app.runs(&job_id).await;
        (runs.len() == 2 && ended(&runs[0]).is_some()).then(|| runs[0].clone())
    })
    .await;
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(run(app, &first_id).await["state"], "cancelled");
    for (index, copy) in children(app, &first_id).await.iter().enumerate() {
        assert_eq!(copy["state"], "cancelled", "{copy}");
        assert_legal_history(copy);
        let log = eventually(Duration::from_secs(20), "the checkpoint line", || async {
            let log = app.run_log(copy).await;
            log.contains("checkpoint").then_some(log)
        })
        .await;
        assert_eq!(log, format!("started\ncheckpoint {index}\n"));
        assert_terminated(store, copy["instance_id"].as_str().unwrap()).await;
    }
    let copies = children(app, second["id"].as_str().unwrap()).await;
    assert!(
        copies.iter().all(|copy| copy["state"] == "succeeded"),
        "{copies:?}"
    );
}
