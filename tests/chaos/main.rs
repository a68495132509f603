//! `spot-chaos`: runs the whole stack as separate processes (two apis, two provisioners, two reapers,
//! binaries beside it) on a Redis of its own and a RabbitMQ vhost of its own, schedules a mix of work
//! across a window (one-shot and cron dummy jobs, container jobs, container jobs that fail and retry,
//! HTTP tasks, run-nows), breaks things on a schedule (kill -9 of each service, restarted as a
//! supervisor would; a RabbitMQ restart; its queues deleted; Redis killed and restarted), waits for
//! the system to heal, and prints one JSON line: the counts `lost`, `duplicated`, `runs_not_ended`,
//! `instances_left`, `containers_left`, `agents_left` and `unexpected_exits` must all be 0 (it exits 1
//! when one is not); `seconds_to_heal` runs from the last fault until all work due before it is done,
//! `max_fire_lateness_secs` is the worst hold-up any fault caused. Cron jobs are checked for
//! duplicates and for still firing at the window's end (their last instant fired, or a fire written
//! after it caught up on it: timers lost with the wiped queues come back through the reconciler
//! about 20 s late, which near the window's end is past the last instant); instants they skipped
//! while a fault held them up are counted (`cron_instants_collapsed`), since a recurring job fires
//! once for what it missed. `scripts/chaos` builds it in release and runs it; `scripts/test` runs
//! the short scenario.
//!
//! `--wipe JOBS` runs another scenario: JOBS dummy jobs all due at one instant; once the pump has
//! handed their timers to RabbitMQ both provisioners are killed and every queue deleted, then the
//! provisioners start again; it prints how long the reconciler took to fire them all, and whether
//! each fired exactly once.
//!
//! Redis runs as `scripts/up` runs it, `appendfsync everysec`; `--fsync always` syncs every write.
//! `--cluster` runs on `scripts/cluster` instead: the store on its Redis Cluster (one replica waited
//! for after each acknowledged write, the jobs over 8 timer shards), the queues on its three
//! RabbitMQ nodes (quorum queues; services given node 1 first, the others besides). The Redis
//! fault becomes a `kill -9` of the primary serving the run's plain prefix (its replica promoted),
//! started again a second later as a replica; the RabbitMQ restart becomes node 1 stopped for 10 s
//! (every service moves to another node) and started again; the queues are deleted through
//! `rabbitmqctl`.
//!
//! Usage: spot-chaos [--short] [--window SECONDS] [--wipe JOBS] [--fsync always|everysec] [--cluster]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};
use spot_shared::cloud::local::LocalCloud;
use spot_shared::store::Store;
use spot_tests::redis_server::RedisServer;

mod supervisor;
mod tally;
mod wipe;

use spot_tests::fault_proxy::FaultProxy;
use spot_tests::{image, rabbitmqctl, TestEnv, ACCOUNT_KEY};
use supervisor::{Supervised, Supervisor};
use tally::{containers_of, tally, Expect};

/// The services run, two of each, with the label each runs under.
const SERVICES: [(&str, &str); 6] = [
    ("api-1", "spot-api"),
    ("api-2", "spot-api"),
    ("provisioner-1", "spot-provisioner"),
    ("provisioner-2", "spot-provisioner"),
    ("reaper-1", "spot-reaper"),
    ("reaper-2", "spot-reaper"),
];

/// The faults, in order, at these fractions of the window. Those with a duration run beside the
/// others and undo themselves when it is over.
const FAULTS: [(f64, Fault); 12] = [
    (0.10, Fault::Kill("provisioner-1")),
    (0.14, Fault::Pause("provisioner-2", 15)),
    (0.18, Fault::Kill("api-1")),
    (0.26, Fault::RabbitRestart),
    (0.34, Fault::SlowLinks(10)),
    (0.40, Fault::Kill("reaper-1")),
    (0.48, Fault::WipeQueues),
    (0.50, Fault::CutRedis(20)),
    (0.58, Fault::RedisRestart),
    (0.68, Fault::Kill("provisioner-2")),
    (0.76, Fault::Kill("api-2")),
    (0.80, Fault::Kill("reaper-2")),
];

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(&'static str),
    /// SIGSTOP for this many seconds (longer than its leases: another takes its shards and
    /// launches), then SIGCONT.
    Pause(&'static str, u64),
    /// [`PROXIED`]'s links to Redis and RabbitMQ (through [`FaultProxy`]) hold every chunk back
    /// 50-150 ms for this many seconds.
    SlowLinks(u64),
    /// [`PROXIED`]'s link to Redis cut for this many seconds (while it holds shard leases).
    CutRedis(u64),
    RabbitRestart,
    WipeQueues,
    RedisRestart,
}

/// The service whose Redis and RabbitMQ links go through fault proxies (not on the clusters, whose
/// clients follow the servers' own addresses).
const PROXIED: &str = "provisioner-1";

/// The two apis, tried in turn: a client of a replicated service retries on the other. Every POST
/// carries an `Idempotency-Key`, the same for each resend of one request, so a request whose answer
/// was lost (an api killed mid-request, a timeout) is sent again without making anything twice; the
/// answers the api gave again from its keys are counted.
struct Client {
    http: reqwest::Client,
    apis: Vec<String>,
    /// Answers marked `Idempotent-Replayed`: resends that would have made a second job or run.
    replayed: std::sync::atomic::AtomicUsize,
}

impl Client {
    /// Sends until a 2xx (returned) or a 4xx other than 409 (an error), trying both apis, for up to a
    /// minute. A 409 is a request with this key still in flight at another api: sent again.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let key = format!("chaos-{:032x}", rand::rng().random::<u128>());
        let mut turn = 0;
        loop {
            let api = &self.apis[turn % self.apis.len()];
            turn += 1;
            let mut request = self
                .http
                .request(method.clone(), format!("{api}{path}"))
                .header("X-Auth-Token", ACCOUNT_KEY)
                .timeout(Duration::from_secs(10));
            if method == reqwest::Method::POST {
                request = request.header("Idempotency-Key", &key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    if response.headers().contains_key("idempotent-replayed") {
                        self.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    let text = response.text().await.unwrap_or_default();
                    return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
                }
                Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {}
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

struct Job {
    id: String,
    expect: Expect,
    due: Option<DateTime<Utc>>,
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
    let mut cluster = false;
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
            "--cluster" => cluster = true,
            other => {
                bail!("unknown argument {other:?}; usage: spot-chaos [--short] [--window SECONDS]")
            }
        }
    }
    let short = window < 90.0;
    let scale = |long: usize, brief: usize| if short { brief } else { long };

    if cluster && wipe.is_some() {
        bail!("--wipe runs on a Redis of its own, not with --cluster");
    }
    // Redis as `scripts/up` runs it (`--fsync always` for every write on disk before its answer),
    // or the cluster.
    let (mut redis, mut env) = if cluster {
        anyhow::ensure!(
            spot_tests::redis_cluster::restore_cluster(),
            "the Redis Cluster is not running: scripts/cluster up"
        );
        anyhow::ensure!(
            spot_tests::rabbit_cluster::is_running(),
            "the RabbitMQ cluster is not running: scripts/cluster up"
        );
        (None, TestEnv::on_clusters())
    } else {
        (
            Some(RedisServer::start_with_fsync(fsync).await),
            TestEnv::new(),
        )
    };
    if let Some(redis) = &redis {
        env.settings.redis.url = secrecy::SecretString::from(redis.url());
        env.overrides
            .push(("SPOT__REDIS__URL".to_string(), redis.url()));
    }
    let image = image::busybox_image().await;
    // A worker for the HTTP tasks: answers each action after a second.
    let worker = spot_tests::http_worker::HttpWorker::start(Duration::from_secs(1)).await;
    let ports = [free_port()?, free_port()?];
    let apis: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let common: Vec<(String, String)> = [
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
    // The proxied provisioner's own links to Redis and RabbitMQ.
    let proxies = if cluster {
        None
    } else {
        let redis_url = secrecy::ExposeSecret::expose_secret(&env.settings.redis.url).to_string();
        let amqp_url = secrecy::ExposeSecret::expose_secret(&env.settings.rabbitmq.url).to_string();
        let (redis_proxy, redis_url) = FaultProxy::in_front_of(&redis_url).await;
        let (amqp_proxy, amqp_url) = FaultProxy::in_front_of(&amqp_url).await;
        let urls = (redis_url, amqp_url);
        Some((redis_proxy, amqp_proxy, urls))
    };
    let proxies = Arc::new(proxies);
    let supervisor = Arc::new(Supervisor::default());
    {
        let mut services = supervisor.services.lock().expect("fresh lock");
        for (label, binary) in SERVICES {
            let mut vars = common.clone();
            if let (Some((_, _, (redis_url, amqp_url))), true) =
                (proxies.as_ref(), label == PROXIED)
            {
                vars.push(("SPOT__REDIS__URL".into(), redis_url.clone()));
                vars.push(("SPOT__RABBITMQ__URL".into(), amqp_url.clone()));
            }
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
        replayed: Default::default(),
    });
    for api in &apis {
        spot_tests::wait_until_healthy(api, Duration::from_secs(60)).await?;
    }

    if let Some(jobs) = wipe {
        let outcome = wipe::wipe_scenario(jobs, &env, &supervisor, &client).await;
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
        let (client, tasks, worker) = (client.clone(), http_tasks.clone(), worker.address.clone());
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
    let mut lasting = Vec::new();
    for (fraction, fault) in FAULTS {
        let when = at(start, window * fraction);
        tokio::time::sleep((when - Utc::now()).to_std().unwrap_or_default()).await;
        eprintln!(
            "[chaos] {:>5.1} s: {fault:?}",
            (Utc::now() - start).num_milliseconds() as f64 / 1000.0
        );
        match fault {
            Fault::Kill(label) => supervisor.kill(label),
            Fault::Pause(label, secs) => {
                supervisor.pause(label);
                let supervisor = supervisor.clone();
                lasting.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    supervisor.unpause(label);
                    eprintln!("[chaos] {label} resumed");
                }));
            }
            Fault::SlowLinks(secs) | Fault::CutRedis(secs) => {
                if proxies.is_none() {
                    eprintln!("[chaos] skipped: no proxied links on the clusters");
                    continue;
                }
                let proxies = proxies.clone();
                lasting.push(tokio::spawn(async move {
                    let Some((redis, amqp, _)) = proxies.as_ref() else {
                        return;
                    };
                    if let Fault::CutRedis(..) = fault {
                        redis.cut();
                    } else {
                        let (latency, jitter) =
                            (Duration::from_millis(50), Duration::from_millis(100));
                        redis.slow_down(latency, jitter);
                        amqp.slow_down(latency, jitter);
                    }
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    redis.restore();
                    amqp.restore();
                    eprintln!("[chaos] {PROXIED}'s links restored");
                }));
            }
            Fault::RabbitRestart if cluster => {
                // The node every service was given first goes away for a while; they move to the
                // others, and the quorum queues' leaders on it move too.
                tokio::task::spawn_blocking(|| {
                    use spot_tests::rabbit_cluster::node_ctl;
                    node_ctl(1, &["stop_app"]);
                    eprintln!("[chaos] RabbitMQ node 1 of 3 stopped");
                    std::thread::sleep(Duration::from_secs(10));
                    node_ctl(1, &["start_app"]);
                    node_ctl(1, &["await_startup"]);
                })
                .await?;
            }
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
                let deleted = tokio::task::spawn_blocking(move || env.wipe_queues()).await?;
                eprintln!("[chaos] {deleted} queues deleted");
            }
            Fault::RedisRestart => match redis.as_mut() {
                Some(redis) => {
                    redis.kill();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    redis.restart().await;
                }
                None => {
                    let name = env.name.clone();
                    tokio::task::spawn_blocking(move || {
                        use spot_tests::redis_cluster::{kill_node, primary_of, restore_cluster};
                        let primary = primary_of(&name).expect("a primary serves the slot");
                        kill_node(primary);
                        eprintln!("[chaos] Redis primary {primary} killed");
                        std::thread::sleep(Duration::from_secs(1));
                        restore_cluster();
                    })
                    .await?;
                }
            },
        }
        last_fault = Utc::now();
    }
    for fault in lasting {
        let _ = fault.await;
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
        "cron_last_caught_up": report.cron_caught_up,
        "runs_failed_lost": report.lost_runs,
        "fires_undelivered": report.undelivered,
        "relaunched": report.relaunched,
        "quarantined": store.quarantined_jobs().await.map(|q| q.len()).unwrap_or(usize::MAX),
        "duplicates_avoided_by_keys": client.replayed.load(Ordering::Relaxed),
        "faults": FAULTS.len(),
        "redis_fsync": if cluster { "always (cluster)" } else { fsync },
        "redis_cluster": cluster,
    });
    for (late, due, job_id) in &report.latest_fires {
        let due = (*due - start).num_milliseconds() as f64 / 1000.0;
        eprintln!("[chaos] late fire: due at {due:5.1} s, {late:.1} s late ({job_id})");
    }
    for (job_id, run_id, attempt, error) in &report.lost_run_errors {
        eprintln!("[chaos] run ended lost: {run_id} (job {job_id}, attempt {attempt}): {error}");
    }
    println!("{outcome}");
    let zero = [
        "lost",
        "fires_undelivered",
        "quarantined",
        "duplicated",
        "runs_not_ended",
        "instances_left",
        "containers_left",
        "agents_left",
        "unexpected_exits",
    ];
    let failed = zero.iter().any(|k| outcome[k] != 0) || outcome["seconds_to_heal"].is_null();
    if failed {
        for suspect in &report.suspects {
            eprintln!("[chaos] {suspect}");
        }
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
