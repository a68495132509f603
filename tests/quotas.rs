//! Per-account quotas, on the real stack: what a job asks for is refused at the door (429 naming the
//! quota, nothing stored); what its runs use (fires a minute, live instances, HTTP tasks held open)
//! ends the run over it `provision_failed` naming the quota; a slot given back lets the next run in;
//! every refusal is counted in `/metrics`.

use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{Timelike, Utc};
use serde_json::{json, Value};
use spot_shared::quotas::AccountQuotas;
use spot_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_what_is_over_them_naming_the_quota() {
    let mut env = TestEnv::new();
    let account = env.settings.auth.accounts[0].name.clone();
    env.settings.quotas.accounts.insert(
        account,
        spot_shared::quotas::AccountQuotas {
            max_jobs: Some(2),
            min_interval_secs: Some(60),
            max_disk_gb: Some(50),
            instance_types: Some(vec!["t3.micro".into()]),
            registries: Some(vec!["docker.io".into()]),
            ..Default::default()
        },
    );
    let other = env.settings.auth.accounts[1].name.clone();
    env.settings.quotas.accounts.insert(
        other,
        spot_shared::quotas::AccountQuotas {
            max_jobs: Some(5),
            ..Default::default()
        },
    );
    let app = spawn_app_with(env.settings.clone()).await;
    let dummy = |schedule: &str| json!({"schedule": schedule, "runner": {"type": "dummy", "template": "x"}});
    let container = |extra: Value| {
        let mut runner = json!({"type": "container", "image": "busybox"});
        runner
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"schedule": "@daily", "runner": runner})
    };
    for (body, quota) in [
        (dummy("*/10 * * * * *"), "quotas.min_interval_secs"),
        (dummy("@every 30s"), "quotas.min_interval_secs"),
        (container(json!({"disk_gb": 100})), "quotas.max_disk_gb"),
        (
            container(json!({"instance_types": ["p5.48xlarge"]})),
            "quotas.instance_types",
        ),
        (
            json!({"schedule": "@daily", "runner": {"type": "container", "image": "ghcr.io/x/y:1"}}),
            "quotas.registries",
        ),
    ] {
        let response = app
            .post_raw("/v1/jobs", ACCOUNT_KEY, &body.to_string())
            .await;
        assert_eq!(response.status(), 429, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], quota, "{error}");
    }
    for _ in 0..2 {
        app.create_job(ACCOUNT_KEY, dummy("@hourly")).await;
    }
    let response = app
        .post_raw("/v1/jobs", ACCOUNT_KEY, &dummy("@hourly").to_string())
        .await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"], "quotas.max_jobs", "{error}");
    let listed: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2));

    // Another account has the defaults.
    let response = app
        .post_raw(
            "/v1/jobs",
            OTHER_ACCOUNT_KEY,
            &dummy("*/10 * * * * *").to_string(),
        )
        .await;
    assert_eq!(response.status(), 201);
    // Thirty creates at once, saved together: the quota still holds, each refused one a 429.
    let body = dummy("@hourly").to_string();
    let answers = futures::future::join_all(
        (0..30).map(|_| app.post_raw("/v1/jobs", OTHER_ACCOUNT_KEY, &body)),
    )
    .await;
    let created = answers.iter().filter(|r| r.status() == 201).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((created, refused), (4, 26));
    let listed: Value = app
        .get("/v1/jobs", OTHER_ACCOUNT_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(5));

    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    for (quota, count) in [
        ("min_interval_secs", 2),
        ("max_jobs", 27),
        ("max_disk_gb", 1),
        ("instance_types", 1),
        ("registries", 1),
    ] {
        let line = format!("spot_scheduler_quota_refusals_total{{quota=\"{quota}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// A worker for HTTP tasks: `/hold` answers after four seconds, anything else at once.
async fn spawn_worker() -> (String, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|req: HttpRequest| async move {
            if req.path() == "/hold" {
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
            HttpResponse::Ok().body("done")
        }))
    })
    .workers(2)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let address = format!("http://127.0.0.1:{}", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (address, handle)
}

/// An HRM task (it fires at once), as `key`'s account; its id.
async fn task(app: &TestApp, key: &str, url: &str) -> String {
    let response = app
        .post_raw("/tasks", key, &json!({ "action_url": url }).to_string())
        .await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The first run of a job once it has ended.
async fn ended_run(app: &TestApp, key: &str, job_id: &str) -> Value {
    eventually(Duration::from_secs(60), "the run to end", || async {
        let runs: Value = app
            .get(&format!("/v1/jobs/{job_id}/runs"), key)
            .await
            .json()
            .await
            .ok()?;
        let run = runs["runs"].as_array()?.first()?.clone();
        let ended = [
            "succeeded",
            "failed",
            "provision_failed",
            "timed_out",
            "cancelled",
        ];
        ended.contains(&run["state"].as_str()?).then_some(run)
    })
    .await
}

fn over_quota(run: &Value, quota: &str) -> bool {
    run["state"] == "provision_failed"
        && run["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("quotas.{quota}:")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_over_a_run_time_quota_end_provision_failed_naming_it() {
    let mut env = TestEnv::new();
    let acme = env.settings.auth.accounts[0].name.clone();
    let globex = env.settings.auth.accounts[1].name.clone();
    env.settings.quotas.accounts.insert(
        acme,
        AccountQuotas {
            max_live_instances: Some(1),
            max_open_http_tasks: Some(1),
            ..Default::default()
        },
    );
    env.settings.quotas.accounts.insert(
        globex,
        AccountQuotas {
            max_fires_per_minute: Some(2),
            ..Default::default()
        },
    );
    let app = spawn_app_with(env.settings.clone()).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let (worker, worker_server) = spawn_worker().await;

    // HTTP tasks held open: one at a time for acme; the slot comes back when the call ends.
    let holding = task(&app, ACCOUNT_KEY, &format!("{worker}/hold")).await;
    eventually(
        Duration::from_secs(10),
        "the first task to be running",
        || async {
            let runs: Value = app
                .get(&format!("/v1/jobs/{holding}/runs"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .ok()?;
            (runs["runs"][0]["state"] == "running").then_some(())
        },
    )
    .await;
    let refused = task(&app, ACCOUNT_KEY, &format!("{worker}/hold")).await;
    let run = ended_run(&app, ACCOUNT_KEY, &refused).await;
    assert!(over_quota(&run, "max_open_http_tasks"), "{run}");
    assert_eq!(
        ended_run(&app, ACCOUNT_KEY, &holding).await["state"],
        "succeeded"
    );
    let after = task(&app, ACCOUNT_KEY, &format!("{worker}/now")).await;
    assert_eq!(
        ended_run(&app, ACCOUNT_KEY, &after).await["state"],
        "succeeded"
    );

    // Fires a minute: globex's third fire of a minute is refused. (Started early in a minute, so
    // that the three fall in the same one.)
    while Utc::now().second() > 45 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(task(&app, OTHER_ACCOUNT_KEY, &format!("{worker}/now")).await);
    }
    let mut refused = 0;
    for id in &tasks {
        let run = ended_run(&app, OTHER_ACCOUNT_KEY, id).await;
        if over_quota(&run, "max_fires_per_minute") {
            refused += 1;
        } else {
            assert_eq!(run["state"], "succeeded", "{run}");
        }
    }
    assert_eq!(refused, 1);

    // Live instances: one for acme; the second container run is refused, and once the first
    // instance is terminated a third launches.
    let image = spot_tests::image::busybox_image().await;
    let container = |cmd: &str| json!({"schedule": "0 3 * * *", "runner": {"type": "container", "image": image, "cmd": cmd}});
    let first = app.create_job(ACCOUNT_KEY, container("sleep 4")).await;
    let second = app.create_job(ACCOUNT_KEY, container("true")).await;
    app.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{first}/run"),
        ACCOUNT_KEY,
        None,
    )
    .await;
    eventually(Duration::from_secs(30), "the first instance", || async {
        let runs = app.runs(&first).await;
        runs.first()?["instance_id"].is_string().then_some(())
    })
    .await;
    app.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{second}/run"),
        ACCOUNT_KEY,
        None,
    )
    .await;
    let run = ended_run(&app, ACCOUNT_KEY, &second).await;
    assert!(over_quota(&run, "max_live_instances"), "{run}");
    let first_run = ended_run(&app, ACCOUNT_KEY, &first).await;
    assert_eq!(first_run["state"], "succeeded", "{first_run}");
    let instance_id = first_run["instance_id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(30),
        "the first instance to be terminated",
        || async {
            let instance: Value = app
                .get(&format!("/v1/instances/{instance_id}"), ACCOUNT_KEY)
                .await
                .json()
                .await
                .ok()?;
            (instance["state"] == "terminated").then_some(())
        },
    )
    .await;
    let third = app.create_job(ACCOUNT_KEY, container("true")).await;
    app.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{third}/run"),
        ACCOUNT_KEY,
        None,
    )
    .await;
    let run = ended_run(&app, ACCOUNT_KEY, &third).await;
    assert_eq!(run["state"], "succeeded", "{run}");

    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    for quota in [
        "max_open_http_tasks",
        "max_fires_per_minute",
        "max_live_instances",
    ] {
        let line = format!("spot_scheduler_quota_refusals_total{{quota=\"{quota}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    worker_server.stop(true).await;
    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
}

/// The output of a run, once it has ended.
async fn output_of(app: &TestApp, job_id: &str) -> (Value, String) {
    let run = ended_run(app, ACCOUNT_KEY, job_id).await;
    let id = run["id"].as_str().unwrap().to_string();
    let log = app
        .get(&format!("/v1/runs/{id}/logs"), ACCOUNT_KEY)
        .await
        .text()
        .await
        .unwrap();
    (run, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_history_bytes_are_bounded_and_freed_as_runs_go() {
    let mut env = TestEnv::new();
    let acme = env.settings.auth.accounts[0].name.clone();
    env.settings.quotas.accounts.insert(
        acme.clone(),
        AccountQuotas {
            max_history_bytes: Some(100),
            ..Default::default()
        },
    );
    let app = spawn_app_with(env.settings.clone()).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let store = env.store().await;
    let image = spot_tests::image::busybox_image().await;
    // 80 bytes of output, the job keeping one run.
    let job = json!({
        "schedule": "0 3 * * *",
        "runner": {"type": "container", "image": image, "cmd": "sh -c 'printf %080d 0'"},
        "policies": {"history_limit": 1},
    });
    let run_now = |id: String| {
        let app = &app;
        async move {
            app.send(
                reqwest::Method::POST,
                &format!("/v1/jobs/{id}/run"),
                ACCOUNT_KEY,
                None,
            )
            .await;
        }
    };

    let first = app.create_job(ACCOUNT_KEY, job.clone()).await;
    run_now(first.clone()).await;
    let (run, log) = output_of(&app, &first).await;
    assert_eq!(log.len(), 80, "{run}");
    assert_eq!(store.history_bytes(&acme).await.unwrap(), 80);

    // Run again: the first run is trimmed from the history, and its bytes with it.
    let earlier = ended_run(&app, ACCOUNT_KEY, &first).await["id"].clone();
    run_now(first.clone()).await;
    let (run, log) = eventually(Duration::from_secs(60), "the second run", || async {
        let (run, log) = output_of(&app, &first).await;
        (run["id"] != earlier).then_some((run, log))
    })
    .await;
    assert_eq!(log.len(), 80, "{run}");
    assert_eq!(store.history_bytes(&acme).await.unwrap(), 80);

    // Another job's output fits only in what is left, and the cut is counted.
    let second = app.create_job(ACCOUNT_KEY, job.clone()).await;
    run_now(second.clone()).await;
    let (run, log) = output_of(&app, &second).await;
    assert_eq!(log.len(), 20, "{run}");
    assert_eq!(run["state"], "succeeded");
    assert_eq!(store.history_bytes(&acme).await.unwrap(), 100);
    let metrics = app.get("/metrics", ACCOUNT_KEY).await.text().await.unwrap();
    let line = "spot_scheduler_quota_refusals_total{quota=\"max_history_bytes\"} 1";
    assert!(metrics.contains(line), "{line} in {metrics}");

    // Deleting a job gives its runs' bytes back.
    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/jobs/{first}"),
            ACCOUNT_KEY,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(store.history_bytes(&acme).await.unwrap(), 20);

    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
}

/// The store's side of creates sent together (the api's create queue hands over up to 128 in one
/// script): each account is counted on its own, in order, however its jobs are interleaved with
/// another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_saved_together_count_each_account_on_its_own() {
    use spot_shared::store::Created;
    let env = TestEnv::new();
    let (store, template) = stored_template(&env).await;
    let template_id = template.id.clone();
    let (first, second) = (template.account.clone(), format!("{}-2", template.account));
    // Room for two more in the first account (it holds the template), three in the second.
    let jobs: Vec<_> = (0..12)
        .map(|i| {
            let mut job = template.clone();
            job.id = format!("{template_id}{i:02}");
            job.account = if i % 2 == 0 { &first } else { &second }.clone();
            (job, 3)
        })
        .collect();
    let refs: Vec<_> = jobs.iter().map(|(job, max)| (job, *max)).collect();
    let created = store.create_jobs(&refs).await.unwrap();
    use Created::{OverQuota, Saved};
    assert_eq!(
        created,
        [
            Saved,
            Saved,
            Saved,
            Saved,
            OverQuota(3),
            Saved,
            OverQuota(3),
            OverQuota(3),
            OverQuota(3),
            OverQuota(3),
            OverQuota(3),
            OverQuota(3),
        ]
    );
    for (account, held) in [(&first, 3), (&second, 3)] {
        assert_eq!(store.count_jobs(account).await.unwrap(), held, "{account}");
    }
    for (job, _) in &jobs {
        let saved = store.get_job(&job.id).await.unwrap().is_some();
        let expected = created[jobs.iter().position(|(j, _)| j.id == job.id).unwrap()] == Saved;
        assert_eq!(saved, expected, "{}", job.id);
    }
}

/// More creates than one script takes (1,000): each script counts from what those before it saved,
/// and its variadic writes (2,000 values) fit Lua's stack, which 4,500 jobs in one would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_past_one_scripts_share_keep_counting() {
    use spot_shared::store::Created;
    let env = TestEnv::new();
    let (store, template) = stored_template(&env).await;
    let template_id = template.id.clone();
    let jobs: Vec<_> = (0..4_500)
        .map(|i| {
            let mut job = template.clone();
            job.id = format!("{template_id}{i:04}");
            job
        })
        .collect();
    let refs: Vec<_> = jobs.iter().map(|job| (job, 4_200)).collect();
    let created = store.create_jobs(&refs).await.unwrap();
    // The template holds one place: 4,199 let in, the rest refused at 4,200.
    assert!(created[..4_199].iter().all(|c| *c == Created::Saved));
    assert!(created[4_199..]
        .iter()
        .all(|c| *c == Created::OverQuota(4_200)));
    assert_eq!(store.count_jobs(&template.account).await.unwrap(), 4_200);
    // Every job let in is listed, with its timer.
    let listed = store.list_jobs(&template.account, None, 0).await.unwrap();
    assert_eq!(listed.len(), 4_200);
    assert!(listed.iter().all(|job| job.next_fire_at.is_some()));
}
