//! The `ec2` provider end to end, on moto's EC2 server, RabbitMQ, Redis and the Docker engine. A
//! `CloudPlayer` plays EC2's part (it boots an agent from each new instance's user data), and an
//! `Ec2Proxy` in front of moto injects EC2's failures (both in [`Ec2Stack`]). After every test, moto has no running
//! instance of the test's cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use spot_shared::aws::Params;
use spot_tests::ec2_stack::Ec2Stack;
use spot_tests::image::busybox_image;
use spot_tests::{
    assert_legal_history, eventually, spawn_provisioner, spawn_reaper, ServiceProcess, ACCOUNT_KEY,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_job_runs_on_a_spot_instance_that_is_terminated_after() {
    let stack = Ec2Stack::start(true).await;
    let stack = stack.with_services().await;

    // Seed 003's surface, verbatim plus instance types.
    let body = json!({
        "schedule": chrono::Utc::now().to_rfc3339(),
        "docker_image": busybox_image().await,
        "cmd": "sh -c 'echo hello from spot; exit 0'",
        "instance_types": ["t3.micro", "t3a.micro"],
    });
    let response = stack
        .app
        .post_raw("/schedule", ACCOUNT_KEY, &body.to_string())
        .await;
    let reply: Value = response.json().await.unwrap();
    let job_id = reply["id"].as_str().unwrap().to_string();

    let run = stack.run_in(&job_id, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_legal_history(&run);
    let run_id = run["id"].as_str().unwrap();
    assert!(stack.log(run_id).await.contains("hello from spot"));

    // moto shows one spot instance for the run, tagged, and terminated once the container exited.
    let instance_id = run["instance_id"].as_str().unwrap().to_string();
    assert!(instance_id.starts_with("i-"), "{run}");
    let instances = stack
        .moto
        .cluster_instances(&stack.env.name, Some(run_id))
        .await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let (id, _, lifecycle, tags) = &instances[0];
    assert_eq!(id, &instance_id);
    assert_eq!(lifecycle.as_deref(), Some("spot"));
    assert_eq!(tags["spot-scheduler:account"], "acme");
    assert_eq!(tags["spot-scheduler:job"], job_id);
    assert_eq!(tags["spot-scheduler:launch"], format!("{run_id}-1"));
    // IMDSv2 only, one hop: a container behind Docker's bridge cannot read the instance's role or
    // user data. (Read from the request: moto does not apply a template's metadata options.)
    let templates = stack
        .proxy
        .as_ref()
        .unwrap()
        .faults
        .launch_templates
        .lock()
        .unwrap()
        .clone();
    assert_eq!(templates.len(), 1, "{templates:?}");
    let option =
        |name: &str| templates[0].get(&format!("LaunchTemplateData.MetadataOptions.{name}"));
    assert_eq!(option("HttpTokens").map(String::as_str), Some("required"));
    assert_eq!(
        option("HttpPutResponseHopLimit").map(String::as_str),
        Some("1")
    );
    assert_eq!(option("HttpEndpoint").map(String::as_str), Some("enabled"));
    eventually(
        Duration::from_secs(30),
        "the instance terminated",
        || async {
            let instances = stack
                .moto
                .cluster_instances(&stack.env.name, Some(run_id))
                .await;
            (instances[0].1 == "terminated").then_some(())
        },
    )
    .await;
    let instance = stack.instance(&instance_id).await.unwrap();
    assert_eq!(instance["lifecycle"], "spot", "{instance}");
    eventually(
        Duration::from_secs(30),
        "the instance recorded terminated",
        || async {
            let instance = stack.instance(&instance_id).await?;
            (instance["state"] == "terminated").then_some(())
        },
    )
    .await;
    // The metrics count the launch and the termination.
    let metrics = stack
        .app
        .get("/metrics", ACCOUNT_KEY)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("spot_scheduler_events_total{event=\"launch_spot\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spot_scheduler_events_total{event=\"instance_terminated\"} 1"),
        "{metrics}"
    );
    // The launch template of the attempt was removed again.
    let templates = stack
        .moto
        .ec2()
        .await
        .client()
        .call("DescribeLaunchTemplates", &Params::new())
        .await
        .unwrap();
    assert_eq!(templates.items(&["launchTemplates"]).count(), 0);

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_spot_capacity_fails_the_run_unless_the_job_allows_on_demand() {
    let stack = Ec2Stack::start(true).await;
    stack
        .faults()
        .no_spot_capacity
        .store(true, Ordering::SeqCst);
    let stack = stack.with_services().await;

    let spot_only = stack.job("true", json!({})).await;
    let run = stack.run_in(&spot_only, 1, &["provision_failed"]).await;
    assert_legal_history(&run);
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("InsufficientInstanceCapacity"), "{run}");
    assert!(error.contains("t3a.micro"), "{run}");
    assert!(run["instance_id"].is_null(), "{run}");

    let fallback = stack
        .job("echo on demand", json!({"on_demand_fallback": true}))
        .await;
    let run = stack.run_in(&fallback, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(
        run["launch_errors"]
            .as_str()
            .unwrap()
            .contains("InsufficientInstanceCapacity"),
        "{run}"
    );
    let instances = stack
        .moto
        .cluster_instances(&stack.env.name, run["id"].as_str())
        .await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].2, None, "an on-demand instance: {instances:?}");

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_launch_is_retried_with_backoff_and_succeeds() {
    let stack = Ec2Stack::start(true).await;
    stack.faults().throttle_calls.store(2, Ordering::SeqCst);
    let stack = stack.with_services().await;

    let job = stack.job("true", json!({})).await;
    let run = stack.run_in(&job, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(stack.faults().throttled.load(Ordering::SeqCst), 2);
    assert_eq!(
        stack
            .moto
            .cluster_instances(&stack.env.name, run["id"].as_str())
            .await
            .len(),
        1
    );

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioner_killed_after_its_launch_call_leaves_one_instance() {
    let mut stack = Ec2Stack::start(true).await;
    stack
        .faults()
        .hold_create_fleet
        .store(true, Ordering::SeqCst);
    stack.services.push(spawn_reaper(&stack.env).await);
    let doomed = ServiceProcess::start(&stack.env, "spot-provisioner", &[]);

    let job = stack.job("echo once", json!({})).await;
    // moto launched; the answer is held back, and the provisioner dies waiting for it.
    eventually(Duration::from_secs(60), "the launch call", || async {
        (stack.faults().fleets_forwarded.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    doomed.kill();
    stack
        .faults()
        .hold_create_fleet
        .store(false, Ordering::SeqCst);

    // The fire comes back to a new provisioner, which finds the instance instead of launching again.
    stack
        .services
        .push(spawn_provisioner(&stack.env, &stack.app.address).await);
    let run = stack.run_in(&job, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_legal_history(&run);
    let instances = stack
        .moto
        .cluster_instances(&stack.env.name, run["id"].as_str())
        .await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(stack.faults().fleets_forwarded.load(Ordering::SeqCst), 1);

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_launch_in_doubt_waits_for_the_cloud_instead_of_launching_again() {
    let mut stack = Ec2Stack::start(false).await;
    let store = stack.env.store().await;
    // No consumer runs: this test drives the launch itself.
    let provisioner = spot_provisioner::Provisioner::build(stack.env.settings.clone())
        .await
        .unwrap();

    // A fire recorded as a run (no provisioner consumes here), and an earlier launch of it whose
    // answer was lost a moment ago: the cloud lists nothing yet, which proves nothing.
    let job_id = stack.job("true", json!({})).await;
    let job = store.get_job(&job_id).await.unwrap().unwrap();
    let at = chrono::Utc::now();
    let spot_shared::store::FireRecord::New(run_id) = store
        .record_fire(&job, job.generation, at, 1)
        .await
        .unwrap()
    else {
        panic!("a new run")
    };
    let run_id = run_id.as_str();
    store.mark_launch_intent(run_id, 1).await.unwrap();
    let err = provisioner.launch_run(run_id).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("in doubt"), "{err}");
    assert!(stack
        .moto
        .cluster_instances(&stack.env.name, None)
        .await
        .is_empty());

    // Past the settle window with still nothing listed, it launches.
    let mut settings = stack.env.settings.clone();
    settings.provisioner.launch_settle_secs = 0;
    let provisioner = spot_provisioner::Provisioner::build(settings)
        .await
        .unwrap();
    provisioner.launch_run(run_id).await.unwrap();
    assert_eq!(
        stack
            .moto
            .cluster_instances(&stack.env.name, None)
            .await
            .len(),
        1
    );
    stack.services.push(spawn_reaper(&stack.env).await);
    let run = stack.run_in(&job_id, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_terminates_orphans_and_the_instances_of_lost_runs() {
    let mut stack = Ec2Stack::start(false).await;
    let mut settings = stack.env.settings.clone();
    settings.reaper.heartbeat_timeout_secs = 2;
    let reaper = spot_reaper::Reaper::build(settings.clone()).await.unwrap();
    let other_reaper = spot_reaper::Reaper::build(settings).await.unwrap();
    stack
        .services
        .push(spawn_provisioner(&stack.env, &stack.app.address).await);

    // An instance of the cluster whose run does not exist (say, deleted while it launched).
    let orphan = stack
        .moto
        .run_instance(&[
            ("spot-scheduler:cluster", &stack.env.name),
            ("spot-scheduler:run", "no-such-run"),
        ])
        .await;

    // A run whose agent dies without a word while its container sleeps.
    let job = stack.job("sleep 300", json!({})).await;
    let run = stack.run_in(&job, 1, &["running"]).await;
    let instance_id = run["instance_id"].as_str().unwrap().to_string();
    stack.player.kill_agent(&instance_id);

    // Two reapers sweep at once: each thing is done once however they race.
    let (mut lost, mut orphans) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lost == 0 || orphans == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep found lost {lost}, orphans {orphans}"
        );
        let (a, b) = tokio::join!(reaper.sweep_once(), other_reaper.sweep_once());
        for report in [a.unwrap(), b.unwrap()] {
            lost += report.lost;
            orphans += report.orphans;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(lost, 1, "one run lost, ended once");
    let run = stack.run_in(&job, 1, &["failed"]).await;
    assert!(run["error"].as_str().unwrap().starts_with("lost"), "{run}");
    assert_legal_history(&run);
    for id in [&orphan, &instance_id] {
        let state = stack
            .moto
            .cluster_instances(&stack.env.name, None)
            .await
            .into_iter()
            .find(|(i, ..)| i == id)
            .map(|(_, state, ..)| state);
        assert_eq!(state.as_deref(), Some("terminated"), "{id}");
    }
    // A second sweep finds nothing more to do.
    assert_eq!(
        reaper.sweep_once().await.unwrap(),
        spot_reaper::SweepReport::default()
    );

    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_spot_instance_is_replaced_by_a_new_attempt_on_a_new_instance() {
    let stack = Ec2Stack::start(false).await;
    let stack = stack.with_services().await;

    let job = stack
        .job_with_policies(
            "sleep 6",
            json!({"retries": {"max_attempts": 3, "backoff_secs": 1, "backoff_max_secs": 1}}),
        )
        .await;
    let first = stack.run_in(&job, 1, &["running"]).await;
    let first_instance = first["instance_id"].as_str().unwrap().to_string();
    stack.player.interrupt(&first_instance);

    let first = stack.run_in(&job, 1, &["interrupted"]).await;
    assert_legal_history(&first);
    let second = stack.run_in(&job, 2, &["succeeded", "failed"]).await;
    assert_eq!(second["state"], "succeeded", "{second}");
    let second_instance = second["instance_id"].as_str().unwrap();
    assert_ne!(second_instance, first_instance);
    let instances = stack.moto.cluster_instances(&stack.env.name, None).await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    eventually(
        Duration::from_secs(30),
        "both instances terminated",
        || async {
            let states: Vec<String> = stack
                .moto
                .cluster_instances(&stack.env.name, None)
                .await
                .into_iter()
                .map(|(_, state, ..)| state)
                .collect();
            states.iter().all(|s| s == "terminated").then_some(())
        },
    )
    .await;

    stack.finish().await;
}

/// On a spot interruption notice the container gets its stop signal and its grace before the kill:
/// one that traps SIGTERM writes its checkpoint line, then the run ends `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interruption_notice_gives_the_container_its_stop_signal_and_grace() {
    let stack = Ec2Stack::start(false).await;
    let stack = stack.with_services().await;
    let job = stack
        .job_with_policies(
            "sh -c 'trap \"echo checkpoint saved; cat /run/spot/interruption; exit 0\" TERM; echo started; while true; do sleep 1; done'",
            json!({"retries": {"max_interruptions": 0}}),
        )
        .await;
    let first = stack.run_in(&job, 1, &["running"]).await;
    stack
        .player
        .interrupt(first["instance_id"].as_str().unwrap());
    let run = stack.run_in(&job, 1, &["interrupted"]).await;
    assert_legal_history(&run);
    let log = eventually(Duration::from_secs(15), "the checkpoint line", || async {
        let log = stack.app.run_log(&run).await;
        log.contains("checkpoint saved").then_some(log)
    })
    .await;
    assert!(log.starts_with("started"), "{log}");
    // The notice's time, read from the file the container was given before the signal.
    let notice = log.lines().last().unwrap_or_default();
    assert!(
        notice.len() == 20 && notice.starts_with("20") && notice.ends_with('Z'),
        "{log}"
    );
    stack.finish().await;
}

/// A spot instance reclaimed while its agent could not say so (the agent died with it): the sweep
/// finds the run silent and the instance gone, and ends the run `interrupted`, not `failed`, with a
/// new attempt armed as for any interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spot_reclaim_the_agent_never_reported_ends_interrupted() {
    let mut stack = Ec2Stack::start(false).await;
    let mut settings = stack.env.settings.clone();
    settings.reaper.heartbeat_timeout_secs = 2;
    let reaper = spot_reaper::Reaper::build(settings).await.unwrap();
    stack
        .services
        .push(spawn_provisioner(&stack.env, &stack.app.address).await);
    // A retry's wait is drawn from 0 to its backoff: an hour here, and the provisioner is stopped
    // once attempt 1 runs, so that attempt 2 waits in Redis whatever its draw. (With the
    // provisioner left running, a draw under the pump's horizon handed attempt 2 to RabbitMQ, or
    // launched it before the test's end.)
    let job = stack
        .job_with_policies(
            "sleep 300",
            json!({"retries": {"backoff_secs": 3600, "backoff_max_secs": 3600}}),
        )
        .await;
    let run = stack.run_in(&job, 1, &["running"]).await;
    let instance_id = run["instance_id"].as_str().unwrap().to_string();
    assert_eq!(
        stack.instance(&instance_id).await.unwrap()["lifecycle"],
        "spot"
    );
    stack.services.pop().expect("the provisioner").stop().await;
    // The reclaim: the instance goes away, and its agent with it, without a word.
    stack.player.kill_agent(&instance_id);
    stack
        .moto
        .ec2()
        .await
        .client()
        .call(
            "TerminateInstances",
            &Params::new().list("InstanceId", [&instance_id]),
        )
        .await
        .unwrap();

    let interrupted = eventually(Duration::from_secs(30), "the sweep to see it", || async {
        let report = reaper.sweep_once().await.ok()?;
        (report.interrupted == 1).then_some(report)
    })
    .await;
    assert_eq!(interrupted.lost, 0);
    let run = stack.run_in(&job, 1, &["interrupted"]).await;
    assert!(
        run["error"].as_str().unwrap().starts_with("interrupted"),
        "{run}"
    );
    assert_legal_history(&run);
    // Interruptions are retried: attempt 2 is armed in Redis with the run's end.
    let waiting = stack.env.store().await.delayed_fires(10).await.unwrap();
    assert!(
        waiting
            .iter()
            .any(|t| t.fire.job_id == job && t.fire.attempt == 2),
        "{waiting:?}"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instances_agent_reads_the_containers_secrets_itself() {
    let stack = Ec2Stack::start(false).await;
    let stack = stack.with_services().await;
    let password = format!("pw-{}", spot_shared::ids::new_id());
    let chain = std::sync::Arc::new(spot_shared::aws::CredentialChain::standard("us-east-1"));
    spot_shared::aws::json::JsonClient::new(
        &stack.moto.endpoint,
        "us-east-1",
        ("ssm", "AmazonSSM"),
        chain,
        1,
    )
    .call(
        "PutParameter",
        &json!({"Name": "db-password", "Value": password, "Type": "SecureString"}),
    )
    .await
    .expect("moto keeps the parameter");
    // Nothing resolves it before the launch: the provider is EC2, so the instance's agent does.
    let job_id = stack
        .app
        .create_job(
            ACCOUNT_KEY,
            json!({"schedule": chrono::Utc::now().to_rfc3339(),
                "runner": {"type": "container", "image": busybox_image().await,
                    "instance_types": ["t3.micro"],
                    "cmd": "sh -c 'echo -n \"$DB_PASSWORD\" | sha256sum'",
                    "secrets": {"DB_PASSWORD": "arn:aws:ssm:us-east-1:123456789012:parameter/db-password"}}}),
        )
        .await;
    let run = stack.run_in(&job_id, 1, &["succeeded", "failed"]).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let log = stack.log(run["id"].as_str().unwrap()).await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(password.as_bytes()));
    assert!(log.contains(&digest), "{log}");
    assert!(!log.contains(&password));
}
