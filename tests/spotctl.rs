//! `spotctl` against the real stack (api, provisioner, reaper over Redis, RabbitMQ and Docker): every
//! command, its table and its JSON, its exit codes, and `run --wait` exiting with the container's code.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use spot_tests::image::busybox_image;
use spot_tests::*;

/// What one `spotctl` call did.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.stdout))
    }

    #[track_caller]
    fn ok(self) -> Outcome {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `spotctl` pointed at the test's api with a key, and no config file of the user's.
struct Ctl<'a> {
    env: &'a TestEnv,
    app: &'a TestApp,
    key: &'a str,
}

impl Ctl<'_> {
    async fn run(&self, args: &[&str]) -> Outcome {
        self.run_with(args, &[]).await
    }

    /// With more environment variables (EDITOR, say).
    async fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Outcome {
        let output = tokio::process::Command::new(workspace_binary("spotctl"))
            .args(args)
            .envs(vars.iter().copied())
            .env_remove("VISUAL")
            .env("SPOT_API_URL", &self.app.address)
            .env("SPOT_API_KEY", self.key)
            .env("XDG_CONFIG_HOME", self.env.dir())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("spotctl runs");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// A command that must succeed, printed as a table.
    async fn table(&self, args: &[&str]) -> String {
        self.run(args).await.ok().stdout
    }

    /// A command that must succeed, with `-o json`.
    async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        self.run(&args).await.ok().json()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_in_tables_and_json_with_conventional_exit_codes() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let dir = env.dir();
    let ctl = Ctl {
        env: &env,
        app: &app,
        key: ACCOUNT_KEY,
    };

    // schedule: a TOML job file; the table shows the id, the JSON is the api's.
    let job_file = write(
        &dir,
        "job.toml",
        "name = \"nightly\"\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n\
         [runner]\ntype = \"dummy\"\ntemplate = \"hello {{.Account}}\"\n",
    );
    let created = ctl.json(&["schedule", "-f", &job_file]).await;
    let id = created["id"].as_str().expect("an id").to_string();
    assert_eq!(created["timezone"], "Europe/Berlin");

    // A bad schedule: the field and message, exit 2, nothing stored.
    let bad_file = write(
        &dir,
        "bad.json",
        r#"{"schedule": "every tuesday", "runner": {"type": "dummy", "template": "x"}}"#,
    );
    let refused = ctl.run(&["schedule", "--file", &bad_file]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("schedule"), "{}", refused.stderr);
    let listed = ctl.json(&["jobs"]).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1, "{listed}");

    // jobs, get: the table has the job's row.
    let table = ctl.table(&["jobs"]).await;
    for cell in [
        id.as_str(),
        "nightly",
        "30 2 * * *",
        "Europe/Berlin",
        "enabled",
    ] {
        assert!(table.contains(cell), "{cell} missing from\n{table}");
    }
    let got = ctl.json(&["get", &id]).await;
    assert_eq!(got["id"], id.as_str());
    assert!(ctl.table(&["get", &id]).await.contains("dummy"));

    // next: in the job's zone and in UTC; 02:30 in Berlin is 01:30 UTC in winter.
    let next = ctl.table(&["next", &id, "-n", "3"]).await;
    assert_eq!(next.matches("02:30:00 CE").count(), 3, "{next}");
    let next = ctl.json(&["next", &id, "-n", "3"]).await;
    assert_eq!(next["next"].as_array().unwrap().len(), 3);
    assert!(!ctl.table(&["get", &id]).await.contains("jitter"));

    // A jittered job: its times are when the fires start, and both views say so.
    let jittered_file = write(
        &dir,
        "jittered.toml",
        "schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n[runner]\ntype = \"dummy\"\n\
         template = \"x\"\n[policies]\njitter_secs = 600\nmax_runs = 5\non_last_run = \"delete\"\n",
    );
    let jittered = ctl.json(&["schedule", "-f", &jittered_file]).await;
    let jittered = jittered["id"].as_str().expect("an id").to_string();
    let next = ctl.table(&["next", &jittered, "-n", "3"]).await;
    // 02:30 plus under ten minutes.
    assert_eq!(next.matches(" 02:3").count(), 3, "{next}");
    assert!(next.contains("up to 600 s after its instant"), "{next}");
    let got = ctl.table(&["get", &jittered]).await;
    assert!(
        got.contains("jitter: each fire starts up to 600 s"),
        "{got}"
    );
    // A finite schedule: the fires it has left, and what then.
    assert!(
        got.contains("runs left: 5 of 5 scheduled fires; then the job deletes itself"),
        "{got}"
    );
    ctl.run(&["delete", &jittered, "--yes"]).await.ok();

    // edit from a JSON file; disable, enable.
    let edit_file = write(
        &dir,
        "edit.json",
        r#"{"name": "hourly", "schedule": "@hourly", "runner": {"type": "dummy", "template": "hello {{.Account}}"}}"#,
    );
    let edited = ctl.json(&["edit", &id, "-f", &edit_file]).await;
    assert_eq!(
        (edited["name"].as_str(), edited["schedule"].as_str()),
        (Some("hourly"), Some("@hourly"))
    );
    // edit in $EDITOR: here a script that changes the schedule; an editor that changes nothing
    // leaves the job alone.
    let editor = write(
        &dir,
        "editor.sh",
        "#!/bin/sh\nsed -i 's/@hourly/@daily/' \"$1\"\n",
    );
    let edited = ctl
        .run_with(
            &["-o", "json", "edit", &id],
            &[("EDITOR", &format!("sh {editor}"))],
        )
        .await
        .ok()
        .json();
    assert_eq!(edited["schedule"], "@daily");
    let untouched = ctl
        .run_with(&["edit", &id], &[("EDITOR", "true")])
        .await
        .ok();
    assert!(
        untouched.stderr.contains("unchanged"),
        "{}",
        untouched.stderr
    );
    let disabled = ctl.json(&["disable", &id]).await;
    assert_eq!(disabled["enabled"], false);
    let table = ctl.table(&["enable", &id]).await;
    assert!(table.contains("enabled"), "{table}");

    // pause with a note: the listing shows it; resume clears it and arms the next fire.
    let paused = ctl
        .json(&["pause", &id, "--note", "upstream down, INC-7"])
        .await;
    assert_eq!(paused["paused"]["note"], "upstream down, INC-7");
    assert!(paused["next_fire_at"].is_null(), "{paused}");
    let table = ctl.table(&["jobs"]).await;
    assert!(table.contains("paused: upstream down, INC-7"), "{table}");
    let resumed = ctl.json(&["resume", &id]).await;
    assert!(resumed["paused"].is_null(), "{resumed}");
    assert!(resumed["next_fire_at"].is_string(), "{resumed}");

    // run --wait on the dummy runner: it succeeds, so spotctl exits 0 and shows the states it passed.
    let waited = ctl
        .run(&["run", &id, "--wait", "--timeout", "60"])
        .await
        .ok();
    assert!(
        waited.stderr.contains("pending") && waited.stderr.contains("succeeded"),
        "{}",
        waited.stderr
    );
    let runs = ctl.json(&["runs", &id]).await;
    let run_id = runs["runs"][0]["id"].as_str().expect("a run").to_string();
    let table = ctl.table(&["runs", &id]).await;
    assert!(
        table.contains(&run_id) && table.contains("succeeded"),
        "{table}"
    );
    let logs = ctl.table(&["logs", &run_id]).await;
    assert!(logs.contains("hello acme"), "{logs:?}");
    // A dummy run has no instance: the table is empty, the JSON too.
    let instances = ctl.json(&["instances", &id]).await;
    assert_eq!(instances["instances"], json!([]));

    // status: health and the figures of /metrics.
    let status = ctl.table(&["status"]).await;
    for cell in ["redis", "rabbitmq", "fires recorded", "firing lateness p99"] {
        assert!(status.contains(cell), "{cell} missing from\n{status}");
    }
    let status = ctl.json(&["status"]).await;
    assert_eq!(status["health"]["redis"], "ok");
    assert!(status["fires"].as_f64().unwrap_or(0.0) >= 1.0, "{status}");

    // Conventional exit codes: a wrong key 3, an unknown job 1, usage 2.
    let stranger = Ctl {
        key: "not-a-key",
        ..ctl
    };
    let wrong_key = stranger.run(&["jobs"]).await;
    assert_eq!(wrong_key.code, 3, "{}", wrong_key.stderr);
    let unknown = ctl.run(&["get", "no-such-job"]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no-such-job") || unknown.stderr.contains("404"),
        "{}",
        unknown.stderr
    );
    assert_eq!(ctl.run(&["frobnicate"]).await.code, 2);
    assert_eq!(
        ctl.run(&["schedule", "--image", "x"]).await.code,
        2,
        "--at is required"
    );

    // delete: refused without a terminal unless --yes; then gone.
    let asked = ctl.run(&["delete", &id]).await;
    assert_eq!(asked.code, 2, "{}", asked.stderr);
    assert!(asked.stderr.contains("--yes"), "{}", asked.stderr);
    ctl.run(&["get", &id]).await.ok();
    ctl.run(&["delete", &id, "--yes"]).await.ok();
    assert_eq!(ctl.run(&["get", &id]).await.code, 1);

    // Completions for a shell.
    let completions = ctl.table(&["completions", "bash"]).await;
    assert!(completions.contains("spotctl") && completions.contains("schedule"));

    provisioner.stop().await;
    app.service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_exits_with_the_containers_exit_code_and_shows_its_instance() {
    let env = TestEnv::new();
    let image = busybox_image().await;
    let app = spawn_app(&env).await;
    let provisioner = spawn_provisioner(&env, &app.address).await;
    let reaper = spawn_reaper(&env).await;
    let ctl = Ctl {
        env: &env,
        app: &app,
        key: ACCOUNT_KEY,
    };

    // A container job that never fires on its own (once a year), run by hand.
    let job = json!({
        "name": "exits-3",
        "schedule": "@yearly",
        "runner": {"type": "container", "image": image, "cmd": "sh -c 'echo from the container; exit 3'"},
    });
    let job_file = write(&env.dir(), "container.json", &job.to_string());
    let created = ctl.json(&["schedule", "-f", &job_file]).await;
    let id = created["id"].as_str().unwrap().to_string();

    let waited = ctl.run(&["run", &id, "--wait", "--timeout", "120"]).await;
    assert_eq!(waited.code, 3, "stderr: {}", waited.stderr);
    for state in ["pending", "running", "failed"] {
        assert!(
            waited.stderr.contains(state),
            "{state} missing from {}",
            waited.stderr
        );
    }
    let run = &app.runs(&id).await[0];
    let run_id = run["id"].as_str().unwrap();
    let logs = ctl.table(&["logs", "-f", run_id]).await;
    assert_eq!(logs, "from the container\n");

    // Its instance: the local provider's, terminated once the reaper is done with it.
    let instances = eventually(
        Duration::from_secs(60),
        "the instance to be terminated",
        || async {
            let out = ctl.json(&["instances", &id]).await;
            (out["instances"][0]["state"] == "terminated").then_some(out)
        },
    )
    .await;
    assert_eq!(instances["instances"][0]["provider"], "local");
    let table = ctl.table(&["instances", &id]).await;
    assert!(
        table.contains("local") && table.contains("terminated"),
        "{table}"
    );

    // What it cost: the local provider's price (0), over at least the minute EC2 would bill.
    let usage = eventually(Duration::from_secs(30), "the run's cost summed", || async {
        let usage = ctl.json(&["usage"]).await;
        (usage["runs"] == 1).then_some(usage)
    })
    .await;
    assert_eq!(usage["usd"], 0.0);
    assert!(usage["instance_seconds"].as_u64().unwrap() >= 60, "{usage}");
    assert_eq!(usage["groups"][0]["jobs"][0]["job_id"], id.as_str());
    let table = ctl.table(&["usage"]).await;
    assert!(table.contains(&id) && table.contains("total"), "{table}");
    let bad = ctl.run(&["usage", "--from", "yesterday"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("from"), "{}", bad.stderr);

    // A job its policy retries: --wait follows the retry and exits with the last attempt's code.
    let retried = json!({
        "name": "retried",
        "schedule": "@yearly",
        "runner": {"type": "container", "image": image, "cmd": "sh -c 'exit 4'"},
        "policies": {"retries": {"max_attempts": 2, "backoff_secs": 1, "backoff_max_secs": 1}},
    });
    let retried_file = write(&env.dir(), "retried.json", &retried.to_string());
    let retried_id = ctl.json(&["schedule", "-f", &retried_file]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waited = ctl
        .run(&["run", &retried_id, "--wait", "--timeout", "120"])
        .await;
    assert_eq!(waited.code, 4, "stderr: {}", waited.stderr);
    assert!(waited.stderr.contains("attempt 2"), "{}", waited.stderr);
    let runs = app.runs(&retried_id).await;
    assert_eq!(runs.len(), 2, "both attempts ran: {runs:?}");
    assert!(runs
        .iter()
        .any(|r| r["attempt"] == 2 && r["will_retry"] == false));
    assert!(runs
        .iter()
        .any(|r| r["attempt"] == 1 && r["will_retry"] == true));

    // run --env/--cmd: this run alone runs another command with another variable; the job keeps its.
    let overridden = ctl
        .run(&[
            "run",
            &id,
            "--wait",
            "--timeout",
            "120",
            "--env",
            "CODE=5",
            "--cmd",
            "sh -c 'exit $CODE'",
        ])
        .await;
    assert_eq!(overridden.code, 5, "stderr: {}", overridden.stderr);
    // backfill: the job's instants of the last three years, two at a time; listed with progress.
    let from = (chrono::Utc::now() - chrono::Duration::days(3 * 366)).to_rfc3339();
    let to = chrono::Utc::now().to_rfc3339();
    let made = ctl
        .json(&[
            "backfill",
            &id,
            "--from",
            &from,
            "--to",
            &to,
            "--concurrency",
            "2",
        ])
        .await;
    assert_eq!(made["total"], 3, "{made}");
    let backfill_id = made["id"].as_str().unwrap().to_string();
    let listed = ctl.table(&["backfills", &id]).await;
    assert!(
        listed.contains(&backfill_id) && listed.contains("UNDER WAY"),
        "{listed}"
    );
    let unknown = ctl
        .run(&["backfills", &id, "--cancel", "no-such-backfill"])
        .await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    // A bad override is the api's 400: exit code 2, naming the item.
    let bad = ctl.run(&["run", &id, "--env", "no-equals"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("env[0]"), "{}", bad.stderr);

    // The simple API's fields: scheduled, with an id.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let simple = ctl
        .json(&[
            "schedule", "--image", image, "--at", &at, "--cmd", "true", "-e", "A=1",
        ])
        .await;
    assert_eq!(simple["status"], "scheduled");
    let missing = ctl
        .run(&["schedule", "--image", image, "--at", "not a time"])
        .await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("schedule"), "{}", missing.stderr);

    reaper.stop().await;
    provisioner.stop().await;
    app.service.stop().await;
}

/// A proxy in front of the api that passes each request on but swallows the first `lose` answers:
/// the request did its work, the client never heard. Returns its address.
async fn answer_losing_proxy(api: &str, lose: usize) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = api.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let lost = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let lost = lost.clone();
            tokio::spawn(async move {
                // One request per connection: read its head and body, forward, answer or not.
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = client.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&request).replacen(
                    "\r\n\r\n",
                    "\r\nConnection: close\r\n\r\n",
                    1,
                );
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                server.write_all(text.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer).await;
                if lost.fetch_add(1, Ordering::SeqCst) < lose {
                    return; // the answer is dropped with the connection
                }
                let _ = client.write_all(&answer).await;
            });
        }
    });
    address
}

/// The answer to `spotctl schedule` is lost twice on the way back (the work was done each time):
/// spotctl sends the request again with the same idempotency key, gets the first answer, and one job
/// is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_whose_answer_is_lost_is_sent_again_and_makes_one_job() {
    let env = TestEnv::new();
    let app = spawn_app(&env).await;
    let proxy = answer_losing_proxy(&app.address, 2).await;
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let output = tokio::process::Command::new(workspace_binary("spotctl"))
        .args(["-o", "json", "schedule", "--image", "busybox", "--at", &at])
        .env("SPOT_API_URL", &proxy)
        .env("SPOT_API_KEY", ACCOUNT_KEY)
        .env("XDG_CONFIG_HOME", env.dir())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("sending again").count(),
        2,
        "two lost answers: {stderr}"
    );
    let jobs: Value = app.get("/v1/jobs", ACCOUNT_KEY).await.json().await.unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
}
