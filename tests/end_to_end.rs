//! One job the whole way on real parts: `POST /schedule` → timer on RabbitMQ → provisioner records the
//! run and launches a local agent → the agent runs the container on the Docker engine and calls back →
//! the reaper terminates the instance.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use chrono::Utc;
use serde_json::{json, Value};
use spot_provisioner::FireOutcome;
use spot_shared::cloud::local::tagged_processes;
use spot_shared::cloud::INSTANCE_LABEL;
use spot_shared::messages::FireMessage;
use spot_tests::image::{busybox_image, docker};
use spot_tests::*;

async fn run_job_to_the_end(exit_code: i32, expected_status: &str) -> Value {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;

    let schedule = (Utc::now() + chrono::Duration::seconds(2))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let due: chrono::DateTime<Utc> = schedule.parse().unwrap();
    let body = json!({
        "schedule": schedule,
        "docker_image": image,
        "env": ["GREETING=hello from spot", "key1=value=1"],
        "cmd": format!("sh -c 'echo \"$GREETING\"; echo \"$key1\"; exit {exit_code}'"),
    });
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    assert_eq!(response.status(), 200);
    let scheduled: Value = response.json().await.unwrap();
    assert_eq!(scheduled["status"], "scheduled");
    assert_eq!(scheduled["message"], "job successfully scheduled");
    let id = scheduled["id"].as_str().unwrap().to_string();
    assert_eq!(app.status(&id).await["status"], "scheduled");

    let status = eventually(Duration::from_secs(90), "the run to end", || async {
        let status = app.status(&id).await;
        (status["status"] == expected_status && status["aws"]["state"] == "terminated")
            .then_some(status)
    })
    .await;

    // It ran no earlier than it was due.
    let run = &status["run"];
    let fired: chrono::DateTime<Utc> =
        serde_json::from_value(run["transitions"]["pending"].clone()).unwrap();
    assert!(fired >= due, "fired at {fired}, due {due}");

    assert_eq!(
        status["celery"]["job_parent_id"], run["id"],
        "seed 003's task id"
    );
    assert_eq!(status["docker"]["container_exit_code"], exit_code);
    assert_eq!(status["docker"]["docker_image"], image);
    let output = status["output"].as_str().unwrap();
    assert!(output.contains("hello from spot\n"), "output: {output:?}");
    assert!(output.contains("value=1\n"), "output: {output:?}");
    assert_eq!(status["aws"]["ready"], true);

    // The run went the whole legal way, every step timestamped.
    for state in ["pending", "provisioning", "booting", "running"] {
        assert!(run["transitions"][state].is_string(), "no {state} in {run}");
    }
    assert_legal_history(run);

    // The container is gone.
    let instance_id = status["aws"]["instance_id"].as_str().unwrap();
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{INSTANCE_LABEL}={instance_id}")],
    )]);
    let left = docker()
        .await
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert!(left.is_empty(), "containers left: {left:?}");

    // And /list shows it with the seed's status word.
    let list: Value = app.get("/list", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    assert_eq!(list["jobs"][0]["status"], expected_status);

    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_exits_3_is_failed_with_its_output_and_its_instance_terminated() {
    let status = run_job_to_the_end(3, "failed").await;
    assert_eq!(status["run"]["state"], "failed");
    assert_eq!(status["run"]["exit_code"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_exits_0_is_finished() {
    let status = run_job_to_the_end(0, "finished").await;
    assert_eq!(status["run"]["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_that_cannot_be_pulled_fails_the_run_with_the_reason() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;

    let body = json!({
        "schedule": Utc::now().to_rfc3339(),
        "docker_image": "registry.invalid/nobody/nothing:1",
        "cmd": "true",
    });
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let status = eventually(Duration::from_secs(90), "the run to fail", || async {
        let status = app.status(&id).await;
        (status["status"] == "failed" && status["aws"]["state"] == "terminated").then_some(status)
    })
    .await;
    let error = status["run"]["error"].as_str().unwrap();
    assert!(
        error.contains("registry.invalid/nobody/nothing:1"),
        "error: {error}"
    );
    assert_eq!(status["docker"]["container_exit_code"], "");

    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fire_delivered_twice_at_once_launches_one_instance() {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let reaper = spawn_reaper(&env).await;
    // No provisioner consumes the queue: this test delivers the fire itself, twice, concurrently.
    let mut settings = env.settings.clone();
    settings.api.public_url = app.address.clone();
    let provisioner = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();

    let due = Utc::now() + chrono::Duration::milliseconds(500);
    let body = json!({"schedule": due.to_rfc3339(), "docker_image": image, "cmd": "sleep 3"});
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fire = FireMessage::scheduled(&id, 1, due);

    let (first, second) = tokio::join!(
        provisioner.handle_fire(&fire),
        provisioner.handle_fire(&fire)
    );
    // One delivery launched; the other found the launch under way (a retryable error: it would be
    // requeued) or already done.
    let outcomes = [&first, &second];
    let launched = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(FireOutcome::Launched { .. })))
        .count();
    assert_eq!(launched, 1, "{first:?} {second:?}");
    assert!(
        outcomes.iter().all(|o| match o {
            Ok(FireOutcome::Launched { .. } | FireOutcome::AlreadyHandled { .. }) => true,
            Err(err) => err.is_retryable(),
            _ => false,
        }),
        "{first:?} {second:?}"
    );
    // A late redelivery changes nothing either.
    let third = provisioner.handle_fire(&fire).await.unwrap();
    assert!(
        matches!(
            third,
            FireOutcome::AlreadyHandled { .. } | FireOutcome::Launched { new: false, .. }
        ),
        "{third:?}"
    );

    let store = env.store().await;
    let runs = store.job_run_ids(&id, 0).await.unwrap();
    assert_eq!(runs.len(), 1);
    let run = store.get_run(&runs[0]).await.unwrap().unwrap();
    let instance_id = run.instance_id.clone().unwrap();
    let agents = tagged_processes(Path::new("/proc"), &instance_id);
    assert_eq!(agents.len(), 1, "agents for {instance_id}: {agents:?}");

    let status = eventually(Duration::from_secs(90), "the run to end", || async {
        let status = app.status(&id).await;
        (status["status"] == "finished" && status["aws"]["state"] == "terminated").then_some(status)
    })
    .await;
    assert_eq!(status["run"]["id"], runs[0].as_str());
    reaper.stop().await;
    app.service.stop().await;
}

/// Containers are bounded: a job's own limits, the deployment's defaults for the rest, and no swap
/// beyond the memory limit (read back from the container's own cgroup).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_runs_within_its_limits() {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let _reaper = spawn_reaper(&env).await;
    // Each limit as the container's own cgroup (v1 or v2) and process status tell it, one per line.
    let read_limits = r#"sh -c '
        v1=/sys/fs/cgroup; read_v1() { cat $v1/$1 2>/dev/null; }
        if [ -f $v1/memory/memory.limit_in_bytes ]; then
          echo memory=$(read_v1 memory/memory.limit_in_bytes)
          echo memory_and_swap=$(read_v1 memory/memory.memsw.limit_in_bytes)
          echo pids=$(read_v1 pids/pids.max)
          echo cpu=$(read_v1 cpu/cpu.cfs_quota_us)/$(read_v1 cpu/cpu.cfs_period_us)
        else
          echo memory=$(cat $v1/memory.max)
          echo swap=$(cat $v1/memory.swap.max)
          echo pids=$(cat $v1/pids.max)
          echo cpu=$(cat $v1/cpu.max | tr " " /)
        fi
        grep NoNewPrivs /proc/self/status | tr -d " \t"'"#;
    let mut ids = Vec::new();
    for limits in [json!({"memory_mb": 64, "pids": 64, "cpus": 0.5}), json!({})] {
        let body = json!({
            "schedule": Utc::now().to_rfc3339(),
            "docker_image": image,
            "cmd": read_limits,
            "limits": limits,
        });
        let response = app
            .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
            .await;
        assert_eq!(response.status(), 200);
        let scheduled: Value = response.json().await.unwrap();
        ids.push(scheduled["id"].as_str().unwrap().to_string());
    }
    let mut outputs = Vec::new();
    for id in &ids {
        let status = eventually(Duration::from_secs(90), "the run to end", || async {
            let status = app.status(id).await;
            (status["status"] == "finished").then_some(status)
        })
        .await;
        outputs.push(status["output"].as_str().unwrap_or_default().to_string());
    }
    let lines = |output: &str| output.lines().map(str::to_string).collect::<Vec<_>>();
    // What a container with these limits must show: memory without swap beyond it (cgroup v1: the
    // memory+swap limit equals the memory limit; v2: no swap), its pids, its CPU quota per 100 ms
    // period, and no privileges gained through setuid binaries.
    let expected = |memory_mb: u64, pids: u64, cpus: f64| {
        let memory = (memory_mb << 20).to_string();
        let quota = (cpus * 100_000.0).round() as u64;
        let mut wanted = vec![
            format!("memory={memory}"),
            format!("pids={pids}"),
            format!("cpu={quota}/100000"),
            "NoNewPrivs:1".to_string(),
        ];
        wanted.push(if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
            format!("memory_and_swap={memory}")
        } else {
            "swap=0".to_string()
        });
        wanted
    };
    let own = lines(&outputs[0]);
    for line in expected(64, 64, 0.5) {
        assert!(own.contains(&line), "{line} in {own:?}");
    }
    let defaults = &env.settings.container_limits;
    let default = lines(&outputs[1]);
    for line in expected(
        u64::from(defaults.memory_mb),
        u64::from(defaults.pids),
        defaults.cpus,
    ) {
        assert!(default.contains(&line), "{line} in {default:?}");
    }

    // Out of range: refused at the door, naming the field.
    let body = json!({"schedule": "@hourly", "docker_image": image, "limits": {"memory_mb": 1}});
    let response = app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"], "limits.memory_mb", "{error}");
}

/// An agent renews its run's heartbeat every beat: a container running over four beats, swept every
/// half second with a heartbeat timeout shorter than two beats, is never taken for lost, and each
/// beat moves `heartbeat_at` on. (Without renewal the sweep ends it `failed` "lost" after the timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_renews_its_heartbeat_every_beat() {
    let mut env = TestEnv::new();
    env.settings.reaper.agent_heartbeat_secs = 2;
    env.settings.reaper.heartbeat_timeout_secs = 3;
    let image = busybox_image().await;
    let store = env.store().await;
    let app = spawn_app(&env).await;
    let _provisioner = spawn_provisioner(&env, &app.address).await;
    let job = app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": Utc::now().to_rfc3339(),
                   "runner": {"type": "container", "image": image, "cmd": "sh -c 'sleep 8; echo done'"}}),
        )
        .await;
    let run_id = eventually(Duration::from_secs(30), "the container running", || async {
        let run = app.runs(&job).await.into_iter().next()?;
        (run["state"] == "running").then(|| run["id"].as_str().unwrap_or_default().to_string())
    })
    .await;
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .unwrap();
    let mut beats = std::collections::BTreeSet::new();
    loop {
        let report = reaper.sweep_once().await.unwrap();
        assert_eq!(report.lost, 0, "a beating agent taken for lost: {report:?}");
        let run = store.get_run(&run_id).await.unwrap().unwrap();
        if run.state.is_terminal() {
            assert_eq!(
                run.state,
                spot_shared::model::RunState::Succeeded,
                "{run:?}"
            );
            break;
        }
        beats.extend(run.heartbeat_at);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(beats.len() >= 3, "three beats or more seen: {beats:?}");
}
