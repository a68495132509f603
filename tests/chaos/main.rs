//! `spot-chaos`: runs the whole stack as separate processes (two apis, two provisioners, two reapers,
//! binaries beside it) on a Redis of its own and a RabbitMQ vhost of its own, schedules a mix of work
//! across a window (one-shot and cron dummy jobs, container jobs, container jobs that fail and retry,
//! HTTP tasks, run-nows), breaks things on a schedule (kill -9 of each service, restarted as a
//! supervisor would; a RabbitMQ restart; its queues deleted; Redis killed and restarted), waits for
//! the system to heal, and prints one JSON line: the counts `lost`, `duplicated`, `runs_not_ended`,
//! `instances_left`, `containers_left`, `agents_left` and `unexpected_exits` must all be 0 (it exits 1
//! when one is not); `seconds_to_heal` runs from the last fault until all work due before it is done,
//! `max_fire_lateness_secs` is the worst hold-up any fault caused. Cron jobs are checked for
//! duplicates and for still firing at the window's end; instants they skipped while a fault held
//! them up are counted (`cron_instants_collapsed`), since a recurring job fires once for what it
//! missed. `scripts/chaos` builds it in release and runs it; `scripts/test` runs
//! the short scenario.
//!
//! `--wipe JOBS` runs another scenario: JOBS dummy jobs all due at one instant; once the pump has
//! handed their timers to RabbitMQ both provisioners are killed and every queue deleted, then the
//! provisioners start again; it prints how long the reconciler took to fire them all, and whether
//! each fired exactly once.
//!
//! Redis runs as `scripts/up` runs it, `appendfsync everysec`; `--fsync always` syncs every write.
//!
//! Usage: spot-chaos [--short] [--window SECONDS] [--wipe JOBS] [--fsync always|everysec]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use spot_shared::cloud::local::LocalCloud;
use spot_shared::model::Run;
use spot_shared::store::Store;
use spot_tests::redis_server::RedisServer;
use spot_tests::{image, rabbitmqctl, ServiceProcess, TestEnv, ACCOUNT_KEY};

/// The services run, two of each, with the label each runs under.
const SERVICES: [(&str, &str); 6] = [
    ("api-1", "spot-api"),
    ("api-2", "spot-api"),
    ("provisioner-1", "spot-provisioner"),
    ("provisioner-2", "spot-provisioner"),
    ("reaper-1", "spot-reaper"),
    ("reaper-2", "spot-reaper"),
];

/// How long a killed service stays down before its supervisor starts it again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The faults, in order, at these fractions of the window.
const FAULTS: [(f64, Fault); 9] = [
    (0.10, Fault::Kill("provisioner-1")),
    (0.18, Fault::Kill("api-1")),
    (0.26, Fault::RabbitRestart),
    (0.40, Fault::Kill("reaper-1")),
    (0.48, Fault::WipeQueues),
    (0.58, Fault::RedisRestart),
    (0.68, Fault::Kill("provisioner-2")),
    (0.76, Fault::Kill("api-2")),
    (0.80, Fault::Kill("reaper-2")),
];

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(&'static str),
    RabbitRestart,
    WipeQueues,
    RedisRestart,
}

/// A service under a supervisor that restarts it when it dies.
struct Supervised {
    label: &'static str,
    binary: &'static str,
    env: Vec<(String, String)>,
    process: Option<ServiceProcess>,
    /// When the chaos killed it (it is then restarted after [`RESTART_DELAY`]).
    killed_at: Option<Instant>,
}

#[derive(Default)]
struct Supervisor {
    services: Mutex<Vec<Supervised>>,
    unexpected_exits: AtomicUsize,
}

impl Supervisor {
    fn start(&self, env: &TestEnv, service: &mut Supervised) {
        let vars: Vec<(&str, &str)> = service
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        service.process = Some(ServiceProcess::start_as(
            env,
            service.binary,
            service.label,
            &vars,
        ));
        service.killed_at = None;
    }

    /// One look: restarts what the chaos killed (after the delay) and what died by itself (counted).
    fn tend(&self, env: &TestEnv) {
        let Ok(mut services) = self.services.lock() else {
            return;
        };
        for service in services.iter_mut() {
            if let Some(process) = service.process.as_mut() {
                if let Some(status) = process.exited() {
                    eprintln!("[chaos] {} exited by itself: {status}", service.label);
                    self.unexpected_exits.fetch_add(1, Ordering::Relaxed);
                    self.start(env, service);
                }
            } else if service
                .killed_at
                .is_some_and(|at| at.elapsed() >= RESTART_DELAY)
            {
                self.start(env, service);
            }
        }
    }

    fn kill(&self, label: &str) {
        let Ok(mut services) = self.services.lock() else {
            return;
        };
        if let Some(service) = services.iter_mut().find(|s| s.label == label) {
            if let Some(process) = service.process.take() {
                process.kill();
            }
            service.killed_at = Some(Instant::now());
        }
    }

    /// Kills a service and keeps it down until [`Supervisor::resume`].
    fn hold_down(&self, label: &str) {
        let Ok(mut services) = self.services.lock() else {
            return;
        };
        if let Some(service) = services.iter_mut().find(|s| s.label == label) {
            if let Some(process) = service.process.take() {
                process.kill();
            }
            service.killed_at = None;
        }
    }

    /// Lets the supervisor start a held-down service again.
    fn resume(&self, label: &str) {
        if let Ok(mut services) = self.services.lock() {
            if let Some(service) = services.iter_mut().find(|s| s.label == label) {
                service.killed_at = Some(Instant::now() - RESTART_DELAY);
            }
        }
    }

    /// SIGTERM to every service; each must exit 0 within its grace (plus a margin), else it counts
    /// as an unexpected exit.
    async fn stop_all(&self) {
        let mut pending: Vec<(&'static str, ServiceProcess)> = match self.services.lock() {
            Ok(mut services) => services
                .iter_mut()
                .filter_map(|s| s.process.take().map(|p| (s.label, p)))
                .collect(),
            Err(_) => return,
        };
        for (_, process) in &pending {
            let pid = nix::unistd::Pid::from_raw(process.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain_mut(|(label, process)| match process.exited() {
                Some(status) if status.success() => false,
                Some(status) => {
                    eprintln!("[chaos] {label} stopped badly: {status}");
                    self.unexpected_exits.fetch_add(1, Ordering::Relaxed);
                    false
                }
                None => true,
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (label, _) in &pending {
            eprintln!("[chaos] {label} did not stop within 20 s of SIGTERM");
            self.unexpected_exits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The two apis, tried in turn: a client of a replicated service retries on the other.
struct Client {
    http: reqwest::Client,
    apis: Vec<String>,
}

impl Client {
    /// Sends until a 2xx (returned) or a 4xx (an error), trying both apis, for up to a minute.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut turn = 0;
        loop {
            let api = &self.apis[turn % self.apis.len()];
            turn += 1;
            let mut request = self
                .http
                .request(method.clone(), format!("{api}{path}"))
                .header("X-Auth-Token", ACCOUNT_KEY)
                .timeout(Duration::from_secs(10));
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let text = response.text().await.unwrap_or_default();
                    return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    bail!(
                        "{path}: {status} {}",
                        response.text().await.unwrap_or_default()
                    );
                }
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("{path}: no api took it within a minute");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn create(&self, body: Value) -> anyhow::Result<String> {
        let reply = self
            .send(reqwest::Method::POST, "/v1/jobs", Some(&body))
            .await?;
        reply["id"].as_str().map(str::to_string).context("a job id")
    }
}

/// An HTTP task accepted, with when it was.
type Task = (String, DateTime<Utc>);

/// What each job must show at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly this many runs, attempts 1..=n.
    Runs(usize),
    /// A cron job: no instant twice, and its last instant in the window fired.
    Cron { last: DateTime<Utc> },
    /// As many runs as run-nows were accepted (counted in `accepted`).
    RunNows,
}

struct Job {
    id: String,
    expect: Expect,
    due: Option<DateTime<Utc>>,
}

/// A worker for the HTTP tasks: answers each action after a second.
async fn spawn_worker() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nworked",
                    )
                    .await;
            });
        }
    });
    Ok(address)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn at(start: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
    start + chrono::Duration::milliseconds((secs * 1000.0) as i64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut window = 180.0;
    let mut wipe: Option<usize> = None;
    let mut fsync = "everysec";
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--short" => window = 45.0,
            "--window" => window = iter.next().context("--window SECONDS")?.parse()?,
            "--fsync" => {
                fsync = match iter.next().map(String::as_str) {
                    Some("always") => "always",
                    Some("everysec") => "everysec",
                    _ => bail!("--fsync always|everysec"),
                }
            }
            "--wipe" => wipe = Some(iter.next().context("--wipe JOBS")?.parse()?),
            other => {
                bail!("unknown argument {other:?}; usage: spot-chaos [--short] [--window SECONDS]")
            }
        }
    }
    let short = window < 90.0;
    let scale = |long: usize, brief: usize| if short { brief } else { long };

    // Redis as `scripts/up` runs it (`--fsync always` for every write on disk before its answer).
    let mut redis = RedisServer::start_with_fsync(fsync).await;
    let mut env = TestEnv::new();
    env.settings.redis.url = secrecy::SecretString::from(redis.url());
    let image = image::busybox_image().await;
    let worker = spawn_worker().await?;
    let ports = [free_port()?, free_port()?];
    let apis: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let common: Vec<(String, String)> = [
        ("SPOT__REDIS__URL", redis.url()),
        ("SPOT__API__PUBLIC_URL", apis[0].clone()),
        ("SPOT__PROVISIONER__RECONCILE_INTERVAL_SECS", "5".into()),
        ("SPOT__PROVISIONER__RECONCILE_GRACE_SECS", "15".into()),
        ("SPOT__REAPER__SWEEP_INTERVAL_SECS", "5".into()),
        ("SPOT__REAPER__HEARTBEAT_TIMEOUT_SECS", "20".into()),
        ("SPOT__REAPER__PENDING_TIMEOUT_SECS", "30".into()),
        ("SPOT__REAPER__BOOT_TIMEOUT_SECS", "60".into()),
        ("SPOT__PROVISIONER__LAUNCH_LEASE_SECS", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let supervisor = Arc::new(Supervisor::default());
    {
        let mut services = supervisor.services.lock().expect("fresh lock");
        for (label, binary) in SERVICES {
            let mut vars = common.clone();
            if let Some(n) = label.strip_prefix("api-") {
                let port = ports[n.parse::<usize>()? - 1];
                vars.push(("SPOT__API__PORT".into(), port.to_string()));
            }
            let mut service = Supervised {
                label,
                binary,
                env: vars,
                process: None,
                killed_at: None,
            };
            supervisor.start(&env, &mut service);
            services.push(service);
        }
    }
    let env = Arc::new(env);
    let tending = {
        let (supervisor, env) = (supervisor.clone(), env.clone());
        tokio::spawn(async move {
            loop {
                supervisor.tend(&env);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let client = Arc::new(Client {
        http: reqwest::Client::new(),
        apis: apis.clone(),
    });
    for api in &apis {
        spot_tests::wait_until_healthy(api, Duration::from_secs(60)).await?;
    }

    if let Some(jobs) = wipe {
        let outcome = wipe_scenario(jobs, &env, &supervisor, &client).await;
        tending.abort();
        supervisor.stop_all().await;
        let outcome = outcome?;
        println!("{outcome}");
        let failed = outcome["lost"] != 0 || outcome["duplicated"] != 0;
        drop(env);
        drop(redis);
        if failed {
            std::process::exit(1);
        }
        return Ok(());
    }

    // The work, its instants spread over the window.
    let start = Utc::now() + chrono::Duration::seconds(5);
    let end = at(start, window);
    let random_due = || at(start, rand::rng().random_range(1.0..window - 5.0));
    let mut jobs: Vec<Job> = Vec::new();
    for _ in 0..scale(400, 120) {
        let due = random_due();
        let body =
            json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "hi"}});
        jobs.push(Job {
            id: client.create(body).await?,
            expect: Expect::Runs(1),
            due: Some(due),
        });
    }
    for _ in 0..scale(12, 4) {
        let due = random_due();
        let body = json!({"schedule": due.to_rfc3339(),
            "runner": {"type": "container", "image": image, "cmd": "sleep 1"}});
        jobs.push(Job {
            id: client.create(body).await?,
            expect: Expect::Runs(1),
            due: Some(due),
        });
    }
    for _ in 0..scale(4, 2) {
        let due = random_due();
        let body = json!({"schedule": due.to_rfc3339(),
            "runner": {"type": "container", "image": image, "cmd": "sh -c 'exit 3'"},
            "policies": {"retries": {"max_attempts": 2, "backoff_secs": 2, "backoff_max_secs": 2}}});
        jobs.push(Job {
            id: client.create(body).await?,
            expect: Expect::Runs(2),
            due: Some(due),
        });
    }
    // Cron every 5 s until the window ends.
    let last_instant = {
        let secs = end.timestamp() - end.timestamp().rem_euclid(5);
        DateTime::from_timestamp(secs, 0).context("an instant")?
    };
    for _ in 0..scale(10, 4) {
        let body = json!({"schedule": "*/5 * * * * *", "runner": {"type": "dummy", "template": "tick"},
            "policies": {"end_at": end.to_rfc3339()}});
        jobs.push(Job {
            id: client.create(body).await?,
            expect: Expect::Cron { last: last_instant },
            due: None,
        });
    }
    let run_now_jobs: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..scale(5, 3) {
            let body =
                json!({"schedule": "0 0 1 1 *", "runner": {"type": "dummy", "template": "now"}});
            ids.push(client.create(body).await?);
        }
        ids
    };
    for id in &run_now_jobs {
        jobs.push(Job {
            id: id.clone(),
            expect: Expect::RunNows,
            due: None,
        });
    }
    let accepted: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let http_tasks: Arc<Mutex<Vec<Task>>> = Arc::default();
    let mut drivers = Vec::new();
    for i in 0..scale(30, 12) {
        let (client, accepted) = (client.clone(), accepted.clone());
        let job = run_now_jobs[i % run_now_jobs.len()].clone();
        let when = random_due();
        drivers.push(tokio::spawn(async move {
            tokio::time::sleep((when - Utc::now()).to_std().unwrap_or_default()).await;
            let path = format!("/v1/jobs/{job}/run");
            if client
                .send(reqwest::Method::POST, &path, None)
                .await
                .is_ok()
            {
                if let Ok(mut counts) = accepted.lock() {
                    *counts.entry(job).or_default() += 1;
                }
            }
        }));
    }
    for _ in 0..scale(8, 3) {
        let (client, tasks, worker) = (client.clone(), http_tasks.clone(), worker.clone());
        let when = random_due();
        drivers.push(tokio::spawn(async move {
            tokio::time::sleep((when - Utc::now()).to_std().unwrap_or_default()).await;
            let body = json!({"action_url": format!("{worker}/work"), "timeout": 60});
            if let Ok(reply) = client
                .send(reqwest::Method::POST, "/tasks", Some(&body))
                .await
            {
                if let (Some(id), Ok(mut tasks)) = (reply.as_str(), tasks.lock()) {
                    tasks.push((id.trim().to_string(), Utc::now()));
                }
            }
        }));
    }
    eprintln!(
        "[chaos] {} jobs scheduled over {window} s from {start}",
        jobs.len()
    );

    // The faults.
    let mut last_fault = Utc::now();
    for (fraction, fault) in FAULTS {
        let when = at(start, window * fraction);
        tokio::time::sleep((when - Utc::now()).to_std().unwrap_or_default()).await;
        eprintln!(
            "[chaos] {:>5.1} s: {fault:?}",
            (Utc::now() - start).num_milliseconds() as f64 / 1000.0
        );
        match fault {
            Fault::Kill(label) => supervisor.kill(label),
            Fault::RabbitRestart => {
                tokio::task::spawn_blocking(|| {
                    rabbitmqctl(&["stop_app"]);
                    std::thread::sleep(Duration::from_secs(3));
                    rabbitmqctl(&["start_app"]);
                    rabbitmqctl(&["await_startup"]);
                })
                .await?;
            }
            Fault::WipeQueues => {
                let env = env.clone();
                tokio::task::spawn_blocking(move || env.wipe_queues()).await?;
            }
            Fault::RedisRestart => {
                redis.kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis.restart().await;
            }
        }
        last_fault = Utc::now();
    }
    for driver in drivers {
        let _ = driver.await;
    }

    // Healing: every job's work done, every run ended, no instance left.
    let store = Store::connect(&env.settings.redis).await?;
    let all_jobs = |tasks: &[Task]| {
        let mut all: Vec<(String, Expect, Option<DateTime<Utc>>)> = jobs
            .iter()
            .map(|j| (j.id.clone(), j.expect, j.due))
            .collect();
        all.extend(
            tasks
                .iter()
                .map(|(id, at)| (id.clone(), Expect::Runs(1), Some(*at))),
        );
        all
    };
    let deadline = Instant::now() + Duration::from_secs(window as u64 + 180);
    let mut healed_at: Option<DateTime<Utc>> = None;
    let report = loop {
        let tasks = http_tasks.lock().map(|t| t.clone()).unwrap_or_default();
        let counts = accepted.lock().map(|c| c.clone()).unwrap_or_default();
        let report = match tally(&store, &all_jobs(&tasks), &counts, last_fault).await {
            Ok(report) => report,
            Err(err) => {
                eprintln!("[chaos] tally failed: {err:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if healed_at.is_none() && report.due_before_fault_done {
            healed_at = Some(Utc::now());
        }
        let live = store.live_instance_count().await.unwrap_or(u64::MAX);
        let done = report.lost == 0 && report.runs_not_ended == 0 && live == 0 && Utc::now() > end;
        if done || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Let late duplicates show, if there are any.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tasks = http_tasks.lock().map(|t| t.clone()).unwrap_or_default();
    let counts = accepted.lock().map(|c| c.clone()).unwrap_or_default();
    let report = tally(&store, &all_jobs(&tasks), &counts, last_fault)
        .await
        .unwrap_or(report);

    tending.abort();
    supervisor.stop_all().await;
    let instances_left = store.live_instance_count().await.unwrap_or(u64::MAX);
    let agents_left = LocalCloud::new(&env.settings.cloud.local, &env.name)?
        .instances()
        .len();
    let containers_left = containers_of(&report.run_ids).await;
    let outcome = json!({
        "scenario": if short { "short" } else { "long" },
        "window_secs": window,
        "jobs": jobs.len() + tasks.len(),
        "runs_expected": report.expected,
        "runs": report.runs,
        "lost": report.lost,
        "duplicated": report.duplicated,
        "runs_not_ended": report.runs_not_ended,
        "instances_left": instances_left,
        "containers_left": containers_left,
        "agents_left": agents_left,
        "unexpected_exits": supervisor.unexpected_exits.load(Ordering::Relaxed),
        "seconds_to_heal": healed_at.map(|at| (at - last_fault).num_milliseconds().max(0) as f64 / 1000.0),
        "max_fire_lateness_secs": report.max_fire_lateness_secs,
        "cron_runs": report.cron_runs,
        "cron_instants_collapsed": report.collapsed,
        "runs_failed_lost": report.lost_runs,
        "faults": FAULTS.len(),
        "redis_fsync": fsync,
    });
    println!("{outcome}");
    let zero = [
        "lost",
        "duplicated",
        "runs_not_ended",
        "instances_left",
        "containers_left",
        "agents_left",
        "unexpected_exits",
    ];
    let failed = zero.iter().any(|k| outcome[k] != 0) || outcome["seconds_to_heal"].is_null();
    if failed {
        // Keep the services' logs for a look.
        std::env::set_var("SPOT_TEST_KEEP_FILES", "1");
        eprintln!(
            "[chaos] FAILED; service logs kept in {}",
            env.dir().display()
        );
    }
    drop(env);
    drop(redis);
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// The counts at one moment.
#[derive(Debug, Default, Clone)]
struct Tally {
    expected: usize,
    runs: usize,
    lost: usize,
    duplicated: usize,
    runs_not_ended: usize,
    /// Cron instants skipped because a fault delayed them (a recurring job fires once for what it
    /// missed): reported, not a failure.
    collapsed: usize,
    /// Runs the sweeps ended as lost (then retried where the policy allows): reported.
    lost_runs: usize,
    /// Runs of cron jobs (not in `runs`: how many a cron job gets depends on what it missed).
    cron_runs: usize,
    /// The latest first fire of any one-shot, from its instant to its run's record, in seconds: how
    /// long the worst fault held work up.
    max_fire_lateness_secs: f64,
    /// Whether all work due before the last fault is done.
    due_before_fault_done: bool,
    run_ids: HashSet<String>,
}

async fn runs_of(store: &Store, job_id: &str) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for id in store.job_run_ids(job_id, 0).await? {
        if let Some(run) = store.get_run(&id).await? {
            runs.push(run);
        }
    }
    Ok(runs)
}

async fn tally(
    store: &Store,
    jobs: &[(String, Expect, Option<DateTime<Utc>>)],
    accepted: &HashMap<String, usize>,
    last_fault: DateTime<Utc>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        due_before_fault_done: true,
        ..Tally::default()
    };
    for (job_id, expect, due) in jobs {
        let runs = runs_of(store, job_id).await?;
        if !matches!(expect, Expect::Cron { .. }) {
            tally.runs += runs.len();
        }
        for run in runs.iter().filter(|r| r.attempt == 1) {
            if let Some(recorded) = run.transitions.values().min() {
                let late = (*recorded - run.scheduled_at).num_milliseconds() as f64 / 1000.0;
                tally.max_fire_lateness_secs = tally.max_fire_lateness_secs.max(late);
            }
        }
        tally.runs_not_ended += runs.iter().filter(|r| !r.state.is_terminal()).count();
        tally.lost_runs += runs
            .iter()
            .filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("lost")))
            .count();
        tally.run_ids.extend(runs.iter().map(|r| r.id.clone()));
        let mut seen: BTreeMap<(i64, u32), usize> = BTreeMap::new();
        for run in &runs {
            *seen
                .entry((run.scheduled_at.timestamp_millis(), run.attempt))
                .or_default() += 1;
        }
        let twice: usize = seen.values().map(|n| n - 1).sum();
        let (wanted, extra) = match expect {
            Expect::Runs(n) => (*n, runs.len().saturating_sub(*n)),
            Expect::RunNows => {
                let n = accepted.get(job_id).copied().unwrap_or(0);
                (n, runs.len().saturating_sub(n))
            }
            Expect::Cron { last } => {
                // Lost: the schedule stopped (its last instant in the window never fired).
                if !runs.iter().any(|r| r.scheduled_at == *last) {
                    tally.lost += 1;
                }
                tally.cron_runs += runs.len();
                // Instants every 5 s from the first run to the last one expected.
                if let Some(first) = runs.iter().map(|r| r.scheduled_at).min() {
                    let instants = ((*last - first).num_seconds() / 5 + 1).max(0) as usize;
                    tally.collapsed += instants.saturating_sub(seen.len());
                }
                tally.duplicated += twice;
                continue;
            }
        };
        tally.expected += wanted;
        tally.lost += wanted.saturating_sub(runs.len());
        tally.duplicated += extra.max(twice);
        if due.is_some_and(|due| due < last_fault) && runs.len() < wanted {
            tally.due_before_fault_done = false;
        }
    }
    Ok(tally)
}

/// Containers, running or not, left by this scenario's runs.
async fn containers_of(run_ids: &HashSet<String>) -> usize {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = image::docker().await;
    let filters = HashMap::from([("label", vec![spot_shared::cloud::RUN_LABEL])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(containers) = docker.list_containers(Some(options)).await else {
        return usize::MAX;
    };
    containers
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(spot_shared::cloud::RUN_LABEL))
                .is_some_and(|run| run_ids.contains(run))
        })
        .count()
}

/// The `--wipe` scenario (see the module doc).
async fn wipe_scenario(
    jobs: usize,
    env: &TestEnv,
    supervisor: &Supervisor,
    client: &Client,
) -> anyhow::Result<Value> {
    use futures::StreamExt;
    let store = Store::connect(&env.settings.redis).await?;
    let created = Instant::now();
    // Time to create them all (about 10,000 a second in release), then a margin.
    let due = Utc::now() + chrono::Duration::seconds(20 + (jobs / 4000) as i64);
    let body = json!({"schedule": due.to_rfc3339(), "runner": {"type": "dummy", "template": "x"}});
    let ids: Vec<String> = futures::stream::iter(0..jobs)
        .map(|_| client.create(body.clone()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "[chaos] {jobs} jobs created in {:?}, due {due}",
        created.elapsed()
    );
    if Utc::now() > due - chrono::Duration::seconds(2) {
        bail!("creating the jobs took too long for their instant");
    }
    // The pump hands timers over in their last second: just before the instant all are in RabbitMQ.
    tokio::time::sleep((due - chrono::Duration::milliseconds(300) - Utc::now()).to_std()?).await;
    for label in ["provisioner-1", "provisioner-2"] {
        supervisor.hold_down(label);
    }
    let redis = redis::Client::open(env.settings.redis.url.expose_secret())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let unarmed: usize = redis::cmd("ZCARD")
        .arg(format!("{}:timers:unarmed", env.name))
        .query_async(&mut conn)
        .await?;
    let deleted = env.wipe_queues();
    eprintln!("[chaos] provisioners killed, {deleted} queues deleted; {unarmed} timers were still in Redis");
    let returned = Instant::now();
    for label in ["provisioner-1", "provisioner-2"] {
        supervisor.resume(label);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_count = 0;
    while last_count < jobs as u64 && Instant::now() < deadline {
        last_count = store
            .fire_lateness()
            .await
            .map(|h| h.count)
            .unwrap_or(last_count);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = returned.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Exactly once: every job's run count.
    let (mut lost, mut duplicated) = (0, 0);
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.zcard(format!("{}:job:{id}:runs", env.name));
        }
        let counts: Vec<usize> = pipe.query_async(&mut conn).await?;
        lost += counts.iter().filter(|&&n| n == 0).count();
        duplicated += counts.iter().map(|&n| n.saturating_sub(1)).sum::<usize>();
    }
    Ok(json!({
        "scenario": "wipe",
        "jobs": jobs,
        "queues_deleted": deleted,
        "timers_in_redis_at_the_wipe": unarmed,
        "seconds_to_fire_all_after_return": healed.as_secs_f64(),
        "lost": lost,
        "duplicated": duplicated,
    }))
}
