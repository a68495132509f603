//! The api under a property-based fuzzer: schemathesis reads `/openapi.json` (every route of every
//! surface) and sends generated requests, valid and invalid, to the real stack (api, provisioner and
//! reaper over Redis, RabbitMQ and the local provider). It must find no 5xx and no input error that
//! fails to name its field (`fuzz/spot_checks.py`), and no service may panic meanwhile, on a request
//! or later, on the fires of what was accepted.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use spot_tests::{
    eventually, spawn_app_with, spawn_provisioner_with, spawn_reaper, TestApp, TestEnv, ACCOUNT_KEY,
};

/// Requests per operation and phase: enough to reach past the surface checks, small enough for CI
/// (the whole run takes a few minutes on two cores).
const EXAMPLES_PER_OPERATION: &str = "60";

/// Counts the panics of every thread of this process from now on, still printing them.
fn count_panics() -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzer_finds_no_server_error_no_nameless_input_error_and_no_panic() {
    let panics = count_panics();
    let mut env = TestEnv::new();
    // The fuzzer's jobs that parse may fire: keep them to one per hour each, and few, so that it
    // tests the api rather than this host's capacity for agent processes.
    env.settings.quotas.max_jobs = 400;
    env.settings.quotas.min_interval_secs = 3600;
    let app = spawn_app_with(env.settings.clone()).await;
    let provisioner = spawn_provisioner_with(env.settings.clone(), &app.address).await;
    let reaper = spawn_reaper(&env).await;

    let known = seed(&app).await;
    let report_dir = env.dir().join("fuzz-report");
    std::fs::create_dir_all(&report_dir).unwrap();
    let config = report_dir.join("schemathesis.toml");
    std::fs::write(&config, known.config()).unwrap();

    let checks_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let fuzz = || {
        Command::new("st")
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{}/openapi.json", app.address)])
            .args(["--header", &format!("X-Auth-Token: {ACCOUNT_KEY}")])
            .args([
                "--checks",
                "not_a_server_error,input_errors_name_the_field,documented_routes_are_served",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", EXAMPLES_PER_OPERATION])
            .args(["--workers", "2", "--request-timeout", "30", "--seed", "1"])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report_dir)
            .env("SCHEMATHESIS_HOOKS", "spot_checks")
            .env("PYTHONPATH", &checks_dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis (`st`, from PyPI) runs; scripts/test installs it")
    };
    let mut output = fuzz();
    let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() && only_the_fuzzers_own_errors(&stdout) {
        // Hypothesis (under schemathesis' workers) now and then fails inside itself ("AST constructor
        // recursion depth mismatch"): not a finding about the api. Once more, from the same seed.
        println!("the fuzzer failed inside itself only; running it again");
        output = fuzz();
        stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }

    provisioner.stop().await;
    reaper.stop().await;
    app.service.stop().await;
    assert!(
        output.status.success(),
        "the fuzzer found failures (report in {}):\n{stdout}",
        report_dir.display()
    );
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a service panicked");
}

/// Whether a failed run found nothing about the api: no check failed, and every error it reports is
/// one of its own (`Runtime Error`), none a network or schema error of ours.
fn only_the_fuzzers_own_errors(stdout: &str) -> bool {
    if stdout.contains("= FAILURES =") {
        return false;
    }
    let Some((_, errors)) = stdout.split_once("= ERRORS =") else {
        return false;
    };
    let mut kinds = Vec::new();
    let mut lines = errors.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        if line.starts_with("___") && line.ends_with("___") {
            kinds.push(lines.next().unwrap_or_default());
        }
    }
    !kinds.is_empty() && kinds.iter().all(|kind| *kind == "Runtime Error")
}

/// What exists before the fuzzer starts, so that its requests reach past "not found": it picks these
/// for path parameters half of the time, and generates values the other half.
struct Known {
    ids: Vec<String>,
    run_ids: Vec<String>,
    accounts: Vec<String>,
    groups: Vec<String>,
}

impl Known {
    fn config(&self) -> String {
        let list = |values: &[String]| serde_json::to_string(values).expect("strings serialise");
        format!(
            r#"
[dictionaries.ids]
values = {ids}
[dictionaries.run_ids]
values = {run_ids}
[dictionaries.accounts]
values = {accounts}
[dictionaries.groups]
values = {groups}

[parameters]
"path.id" = {{ dictionary = "ids", probability = 0.5 }}
"path.run_id" = {{ dictionary = "run_ids", probability = 0.5 }}
"path.account" = {{ dictionary = "accounts", probability = 0.7 }}
"path.group" = {{ dictionary = "groups", probability = 0.5 }}
"#,
            ids = list(&self.ids),
            run_ids = list(&self.run_ids),
            accounts = list(&self.accounts),
            groups = list(&self.groups),
        )
    }
}

/// Jobs on every surface, a run with its instance, for the fuzzer to find.
async fn seed(app: &TestApp) -> Known {
    let mut ids = Vec::new();
    for n in 0..12 {
        let id = app
            .create_job(
                ACCOUNT_KEY,
                json!({
                    "name": format!("fuzz-{n}"),
                    "group": "fuzz",
                    "schedule": "0 3 * * *",
                    "runner": {"type": "dummy", "template": "seeded"},
                }),
            )
            .await;
        ids.push(id);
    }
    for n in 0..6 {
        let body = json!({"job": {
            "name": format!("minion-{n}"),
            "schedule_expression": "0 4 * * *",
            "details": {"runner": "dummyRunner"},
        }});
        let response = app
            .send(
                reqwest::Method::POST,
                "/v1/minion/acme/jobs/fuzz",
                ACCOUNT_KEY,
                Some(body),
            )
            .await;
        let created: Value = response.json().await.unwrap();
        ids.push(created["job"]["id"].as_str().unwrap().to_string());
    }
    for _ in 0..3 {
        let body = json!({"executable": "echo seeded", "schedule": "0 5 * * *", "type": "command"});
        let response = app
            .send(reqwest::Method::POST, "/jobs", ACCOUNT_KEY, Some(body))
            .await;
        let created: Value = response.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    for _ in 0..3 {
        let body = json!({"action_url": "http://127.0.0.1:9/seeded"});
        let response = app
            .send(reqwest::Method::POST, "/tasks", ACCOUNT_KEY, Some(body))
            .await;
        ids.push(response.text().await.unwrap());
    }
    // A run of a container job, with its instance.
    let image = spot_tests::image::busybox_image().await;
    let job = app
        .create_job(
            ACCOUNT_KEY,
            json!({
                "name": "fuzz-container",
                "schedule": "0 3 * * *",
                "runner": {"type": "container", "image": image, "cmd": "echo seeded"},
            }),
        )
        .await;
    ids.push(job.clone());
    app.send(
        reqwest::Method::POST,
        &format!("/v1/jobs/{job}/run"),
        ACCOUNT_KEY,
        None,
    )
    .await;
    let runs = eventually(
        std::time::Duration::from_secs(30),
        "the seeded run",
        || async {
            let runs = app.runs(&job).await;
            runs.iter()
                .any(|run| run["instance_id"].is_string())
                .then_some(runs)
        },
    )
    .await;
    let run_ids: Vec<String> = runs
        .iter()
        .filter_map(|run| run["id"].as_str().map(str::to_string))
        .collect();
    ids.extend(run_ids.iter().cloned());
    ids.extend(
        runs.iter()
            .filter_map(|run| run["instance_id"].as_str().map(str::to_string)),
    );
    Known {
        ids,
        run_ids,
        accounts: vec!["acme".into(), "globex".into()],
        groups: vec!["fuzz".into(), "hrm".into(), "cronjob".into()],
    }
}

#[test]
fn only_errors_inside_the_fuzzer_are_run_again() {
    let header = "==================================== ERRORS ====================================";
    let ours = format!("{header}\n___ GET /jobs ___\nRuntime Error\nAST constructor recursion\n");
    assert!(only_the_fuzzers_own_errors(&ours));
    let network = format!("{ours}___ GET /list ___\nNetwork Error\nConnection refused\n");
    assert!(!only_the_fuzzers_own_errors(&network));
    let failures =
        format!("=================== FAILURES ===================\n___ GET /x ___\n{ours}");
    assert!(!only_the_fuzzers_own_errors(&failures));
    assert!(!only_the_fuzzers_own_errors("no sections at all"));
}
