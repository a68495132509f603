//! The integration-test harness: each test gets a [`TestEnv`] of its own (a Redis key prefix and a
//! RabbitMQ vhost, removed again on drop) and spawns the real services into it on random ports.
//!
//! Needs Redis on 127.0.0.1:6379, RabbitMQ on 5672 with its management API on 15672 (guest/guest),
//! and a Docker engine; `scripts/test` starts them. Override with `SPOT_TEST_REDIS_URL`,
//! `SPOT_TEST_AMQP_BASE`, `SPOT_TEST_RABBIT_ADMIN`. With `SPOT_TEST_REDIS_CLUSTER` (seed node URLs,
//! comma-separated; `scripts/cluster` starts one) every test's store is on that Redis Cluster,
//! waiting for one replica after each acknowledged write, its jobs split over 8 timer shards.
//! `SPOT_TEST_TIMER_SHARDS` sets the shard count (on the single Redis too, where it is 1 unless set).
//! [`TestEnv::on_clusters`] puts a test on both of `scripts/cluster`'s clusters, its vhost on the
//! three RabbitMQ nodes ([`rabbit_cluster`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spot_shared::broker::Broker;
use spot_shared::config::Settings;
use spot_shared::store::Store;
use tokio::sync::oneshot;

pub mod cloud;
pub mod ec2_stack;
pub mod fault_proxy;
pub mod http_worker;
pub mod https_files;
pub mod image;
pub mod rabbit_cluster;
pub mod redis_cluster;
pub mod redis_server;
pub mod webhook_receiver;

pub const ACCOUNT_KEY: &str = "test-key-acme";
pub const OTHER_ACCOUNT_KEY: &str = "test-key-globex";
/// The acme account's `notify_secret` (globex has none).
pub const NOTIFY_SECRET: &str = "test-notify-secret-acme";

fn redis_url() -> String {
    std::env::var("SPOT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The seed nodes of the Redis Cluster the tests run on, if they run on one.
pub fn redis_cluster_nodes() -> Option<Vec<String>> {
    let nodes = std::env::var("SPOT_TEST_REDIS_CLUSTER").ok()?;
    let nodes: Vec<String> = nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// The timer shards a test's store has: `SPOT_TEST_TIMER_SHARDS`, else 8 on a cluster and 1 on the
/// single Redis.
fn timer_shards(cluster: bool) -> u16 {
    std::env::var("SPOT_TEST_TIMER_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if cluster { 8 } else { 1 })
}

/// The `[redis]` lines of a test's settings: the single Redis, or the cluster.
fn redis_toml(prefix: &str, cluster: Option<&[String]>) -> String {
    let shards = timer_shards(cluster.is_some());
    match cluster {
        Some(nodes) => format!(
            "[redis]\nurl = {:?}\nother_urls = {:?}\ncluster = true\nwait_replicas = 1\n\
             key_prefix = {prefix:?}\ntimer_shards = {shards}\n",
            nodes[0],
            &nodes[1..]
        ),
        None => format!(
            "[redis]\nurl = {:?}\nkey_prefix = {prefix:?}\ntimer_shards = {shards}\n",
            redis_url()
        ),
    }
}

/// Deletes every key under a test's prefix (its shards' too), on the single Redis or the cluster.
pub fn delete_redis_keys(prefix: &str, cluster: Option<&[String]>) {
    let clean = |conn: &mut dyn redis::ConnectionLike, pattern: String| {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(conn)
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query(conn);
        }
    };
    match cluster {
        Some(nodes) => {
            // Every key of the prefix starts with a hash tag that starts with the prefix (`{p}` or
            // a shard's `{p:s3}`); KEYS goes to every primary. DEL takes one slot at a time.
            if let Ok(mut conn) = redis::cluster::ClusterClient::new(nodes.to_vec())
                .and_then(|client| client.get_connection())
            {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{prefix}*"))
                    .query(&mut conn)
                    .unwrap_or_default();
                for key in keys {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query(&mut conn);
                }
            }
        }
        None => {
            if let Ok(mut conn) =
                redis::Client::open(redis_url()).and_then(|client| client.get_connection())
            {
                clean(&mut conn, format!("{prefix}:*"));
            }
        }
    }
}

fn amqp_base() -> String {
    std::env::var("SPOT_TEST_AMQP_BASE")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

/// host:port of the RabbitMQ management API.
fn rabbit_admin() -> String {
    std::env::var("SPOT_TEST_RABBIT_ADMIN").unwrap_or_else(|_| "127.0.0.1:15672".into())
}

/// One test's isolated slice of Redis and RabbitMQ.
pub struct TestEnv {
    pub name: String,
    pub settings: Settings,
    /// The TOML the settings came from, for services run as processes.
    pub toml: String,
    /// Settings changed since, as `SPOT__…` environment variables for those processes.
    pub overrides: Vec<(String, String)>,
    /// The Redis Cluster's seed nodes, when the store is on one.
    redis_cluster: Option<Vec<String>>,
    /// Whether the vhost is on `scripts/cluster`'s RabbitMQ cluster (else on the single node).
    rabbit_cluster: bool,
}

impl TestEnv {
    /// A test's slice of the single Redis, or of the cluster `SPOT_TEST_REDIS_CLUSTER` names.
    pub fn new() -> TestEnv {
        TestEnv::with(redis_cluster_nodes(), false)
    }

    /// A test's slice of the Redis Cluster with these seed nodes, whatever the environment says.
    pub fn on_redis_cluster(nodes: &[&str]) -> TestEnv {
        TestEnv::with(Some(nodes.iter().map(|n| n.to_string()).collect()), false)
    }

    /// A test's slice of both of `scripts/cluster`'s clusters: its keys on the Redis Cluster, its
    /// vhost on the three RabbitMQ nodes (node 1 as `rabbitmq.url`, nodes 2 and 3 as
    /// `rabbitmq.other_urls`). The management-API faults below then go through `rabbitmqctl`
    /// (the cluster's nodes have no management API), those that have no `rabbitmqctl` form panic.
    pub fn on_clusters() -> TestEnv {
        let nodes = redis_cluster::SEEDS.iter().map(|n| n.to_string()).collect();
        TestEnv::with(Some(nodes), true)
    }

    fn with(redis_cluster: Option<Vec<String>>, rabbit_cluster: bool) -> TestEnv {
        let name = format!("t-{}", spot_shared::ids::new_id()[..12].to_lowercase());
        let rabbit = if rabbit_cluster {
            rabbit_cluster::add_vhost(&name);
            let others: Vec<String> = rabbit_cluster::NODES[1..]
                .iter()
                .map(|&node| rabbit_cluster::url(node, &name))
                .collect();
            format!(
                "url = {:?}\nother_urls = {others:?}",
                rabbit_cluster::url(1, &name)
            )
        } else {
            TestEnv::make_single_node_vhost(&name);
            format!("url = \"{}/{name}\"", amqp_base())
        };
        let agent_bin = agent_binary();
        let toml = format!(
            r#"
            {redis}
            [rabbitmq]
            {rabbit}
            namespace = "spot"
            [api]
            port = 0
            [auth]
            admin_keys = []
            [[auth.accounts]]
            name = "acme"
            keys = ["{ACCOUNT_KEY}"]
            notify_secret = "{NOTIFY_SECRET}"
            [[auth.accounts]]
            name = "globex"
            keys = ["{OTHER_ACCOUNT_KEY}"]
            [provisioner]
            reconcile_interval_secs = 3600
            [cloud.local]
            agent_bin = "{agent}"
            log_dir = "/tmp/spot-scheduler-tests/{name}"
            [log]
            format = "pretty"
            level = "warn"
            [cronjob]
            image = "{busybox}"
            [outbound]
            allow_loopback = true
            [minion.accounts.acme]
            runners = ["dummyRunner", "instanceRunner"]
            [minion.accounts.globex]
            runners = []
            [minion.runners.instanceRunner]
            type = "instance"
            [minion.runners.dummyRunner]
            type = "dummy"
            template = "Hello, {{{{.Account}}}}!"
            "#,
            redis = redis_toml(&name, redis_cluster.as_deref()),
            agent = agent_bin.display(),
            busybox = image::BUSYBOX_IMAGE,
        );
        let settings = Settings::from_toml(&toml).expect("test settings are valid");
        spot_shared::telemetry::init(&settings.log);
        TestEnv {
            name,
            settings,
            toml,
            overrides: Vec::new(),
            redis_cluster,
            rabbit_cluster,
        }
    }

    /// Switches to the `ec2` provider on `endpoint` (moto, or a proxy in front of it), with this test's
    /// name as the cluster: its instances are its own.
    pub fn use_ec2(&mut self, endpoint: &str, image_id: &str) {
        use spot_shared::config::ProviderKind;
        let cluster = self.name.clone();
        self.settings.cloud.provider = ProviderKind::Ec2;
        self.settings.ec2.endpoint_url = endpoint.to_string();
        self.settings.cloud.ec2.cluster = cluster.clone();
        self.settings.cloud.ec2.image_id = image_id.to_string();
        self.settings.cloud.ec2.instance_types = vec!["t3.micro".into(), "t3a.micro".into()];
        // A crashed launcher's hold on its run must not outlast the test.
        self.settings.provisioner.launch_lease_secs = 3;
        self.overrides.extend(
            [
                ("SPOT__CLOUD__PROVIDER", "ec2"),
                ("SPOT__EC2__ENDPOINT_URL", endpoint),
                ("SPOT__CLOUD__EC2__CLUSTER", &cluster),
                ("SPOT__CLOUD__EC2__IMAGE_ID", image_id),
                ("SPOT__PROVISIONER__LAUNCH_LEASE_SECS", "3"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }

    /// Where this test's files go (agent logs, configuration of service processes).
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/spot-scheduler-tests/{}", self.name))
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.settings.redis)
            .await
            .expect("redis is up")
    }

    /// A plain connection to this test's (single) Redis and the keys of its prefix that end with
    /// `suffix` (`*` allowed): for tests that break records past the store on purpose.
    pub async fn raw_keys(&self, suffix: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
        use secrecy::ExposeSecret;
        let client = redis::Client::open(self.settings.redis.url.expose_secret()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}*{suffix}", self.settings.redis.key_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        (conn, keys)
    }

    /// The key `parts` under this test's plain prefix, as the store names it (`{prefix}:…` on a
    /// cluster, where the prefix is a hash tag).
    pub fn plain_key(&self, parts: &str) -> String {
        match self.redis_cluster {
            Some(_) => format!("{{{}}}:{parts}", self.name),
            None => format!("{}:{parts}", self.name),
        }
    }

    /// One command sent past the store, to the single Redis or the cluster this test is on: for
    /// tests that read or set records the store hides.
    pub fn raw_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match &self.redis_cluster {
            Some(nodes) => {
                let client = redis::cluster::ClusterClient::new(nodes.to_vec()).unwrap();
                cmd.query(&mut client.get_connection().unwrap()).unwrap()
            }
            None => {
                let client = redis::Client::open(redis_url()).unwrap();
                cmd.query(&mut client.get_connection().unwrap()).unwrap()
            }
        }
    }

    pub async fn broker(&self) -> Broker {
        let broker = Broker::connect(&self.settings.rabbitmq)
            .await
            .expect("rabbitmq is up");
        broker.declare_topology().await.expect("topology declares");
        broker
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_local_agents();
        if self.rabbit_cluster {
            rabbit_cluster::delete_vhost(&self.name);
        } else {
            management_request("DELETE", &format!("/api/vhosts/{}", self.name), "");
        }
        delete_redis_keys(&self.name, self.redis_cluster.as_deref());
        // SPOT_TEST_KEEP_FILES=1 keeps agent and service logs for a look after a failure.
        if std::env::var_os("SPOT_TEST_KEEP_FILES").is_none() {
            let _ = std::fs::remove_dir_all(self.dir());
        }
    }
}

impl TestEnv {
    /// Kills the agents this test's deployment started and removes their containers: a test that
    /// ends while a run is under way (its api gone) would leave its agent retrying for minutes.
    fn stop_local_agents(&self) {
        use spot_shared::cloud::local::LocalCloud;
        let Ok(cloud) =
            LocalCloud::new(&self.settings.cloud.local, &self.settings.redis.key_prefix)
        else {
            return;
        };
        for instance in cloud.instances() {
            if let Some(pid) = cloud.find(&instance.id) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let label = format!(
                "label={}={}",
                spot_shared::cloud::INSTANCE_LABEL,
                instance.id
            );
            let listed = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &label])
                .output();
            if let Ok(listed) = listed {
                for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                    let _ = std::process::Command::new("docker")
                        .args(["rm", "-f", container])
                        .output();
                }
            }
        }
    }
}

/// Faults a test inflicts on its own slice of RabbitMQ, through the management API (`rabbitmqctl`
/// on the cluster, for the queue deletions).
impl TestEnv {
    /// Deletes every queue of this test's vhost (and with them whatever they held), as a wiped
    /// broker would lose them; exchanges stay.
    pub fn wipe_queues(&self) -> usize {
        self.delete_queues_where(|_| true)
    }

    /// Deletes this test's queues whose name passes `pick`, with what they hold; returns how many.
    pub fn delete_queues_where(&self, pick: impl Fn(&str) -> bool) -> usize {
        if self.rabbit_cluster {
            let names: Vec<String> = rabbit_cluster::queues(&self.name)
                .into_iter()
                .filter(|name| pick(name))
                .collect();
            for name in &names {
                rabbit_cluster::delete_queue(&self.name, name);
            }
            return names.len();
        }
        let listing = self.management("GET", &format!("/api/queues/{}", self.name), "");
        let queues: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap_or_default();
        let names: Vec<&str> = queues
            .iter()
            .filter_map(|queue| queue["name"].as_str())
            .filter(|name| pick(name))
            .collect();
        for name in &names {
            self.management("DELETE", &format!("/api/queues/{}/{}", self.name, name), "");
        }
        names.len()
    }

    /// Deletes this test's vhost (closing every connection to it) and makes it anew, empty: what a
    /// service sees when its RabbitMQ node is replaced by a new one.
    pub fn replace_vhost_with_empty(&self) {
        self.management("DELETE", &format!("/api/vhosts/{}", self.name), "");
        self.make_vhost();
    }

    /// Deletes this test's vhost only (RabbitMQ refuses connections to it until [`make_vhost`]).
    ///
    /// [`make_vhost`]: TestEnv::make_vhost
    pub fn delete_vhost(&self) {
        self.management("DELETE", &format!("/api/vhosts/{}", self.name), "");
    }

    pub fn make_vhost(&self) {
        assert!(
            !self.rabbit_cluster,
            "make_vhost: the single node's management API only"
        );
        TestEnv::make_single_node_vhost(&self.name);
    }

    /// A management-API call for this test's vhost, which only the single node has.
    fn management(&self, method: &str, path: &str, body: &str) -> String {
        assert!(
            !self.rabbit_cluster,
            "{method} {path}: the single node's management API only"
        );
        management_request(method, path, body)
    }

    fn make_single_node_vhost(name: &str) {
        management_request("PUT", &format!("/api/vhosts/{name}"), "{}");
        management_request(
            "PUT",
            &format!("/api/permissions/{name}/guest"),
            r#"{"configure":".*","write":".*","read":".*"}"#,
        );
    }

    /// The queues of this test's vhost whose names start with `prefix`, with their message counts (as
    /// the management API last sampled them).
    pub fn queue_depths(&self, prefix: &str) -> Vec<(String, u64)> {
        let listing = self.management("GET", &format!("/api/queues/{}", self.name), "");
        let queues: Vec<serde_json::Value> = serde_json::from_str(&listing).unwrap_or_default();
        queues
            .iter()
            .filter_map(|q| {
                let name = q["name"].as_str()?;
                name.starts_with(prefix)
                    .then(|| (name.to_string(), q["messages"].as_u64().unwrap_or(0)))
            })
            .collect()
    }

    /// Up to `count` messages of a queue, looked at as "Get messages" in the management UI does
    /// (requeued after).
    pub fn peek_messages(&self, queue: &str, count: usize) -> Vec<serde_json::Value> {
        let body = format!(r#"{{"count":{count},"ackmode":"ack_requeue_true","encoding":"auto"}}"#);
        let answer = self.management(
            "POST",
            &format!("/api/queues/{}/{queue}/get", self.name),
            &body,
        );
        serde_json::from_str(&answer).unwrap_or_default()
    }

    /// Messages now in the named queue of this test's vhost (as the management API last sampled).
    pub fn queue_depth(&self, queue: &str) -> Option<u64> {
        let body = self.management("GET", &format!("/api/queues/{}/{queue}", self.name), "");
        serde_json::from_str::<serde_json::Value>(&body).ok()?["messages"].as_u64()
    }
}

/// Runs `rabbitmqctl` with `args`, failing the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// A bare HTTP/1.1 call to the management API (blocking, so it also works from `Drop`); returns the
/// response body.
fn management_request(method: &str, path: &str, body: &str) -> String {
    let address = rabbit_admin();
    let mut stream = TcpStream::connect(&address)
        .unwrap_or_else(|e| panic!("RabbitMQ management API at {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    // guest:guest
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("management request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status.starts_with('2') || (method == "DELETE" && status == "404"),
        "{method} {path}: {response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| dechunk(body))
        .unwrap_or_default()
}

/// The body of a response that may come in HTTP/1.1 chunks.
fn dechunk(body: &str) -> String {
    let mut rest = body;
    let mut out = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            // Not chunked after all.
            return body.to_string();
        };
        if size == 0 || after.len() < size {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// `spot-agent`, built beside the test binary (`scripts/test` builds it first) or beside a tool
/// binary such as `spot-chaos`.
pub fn agent_binary() -> PathBuf {
    workspace_binary("spot-agent")
}

/// One of the workspace's binaries (`spot-agent`, `spotctl`), found beside the test binary or in the
/// target directory above it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("the executable's dir");
    let dir = if here.join(name).exists() {
        here
    } else {
        here.parent().expect("target dir")
    };
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        binary.display()
    );
    binary
}

/// A service binary (`spot-provisioner`, say) run as a process of its own with the test's settings,
/// killed when dropped: what a test needs to crash a service for real.
pub struct ServiceProcess {
    child: std::process::Child,
}

impl ServiceProcess {
    pub fn start(env: &TestEnv, binary: &str, extra_env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start_as(env, binary, binary, extra_env)
    }

    /// [`ServiceProcess::start`] with its log named after `label` (several of one service at once).
    pub fn start_as(
        env: &TestEnv,
        binary: &str,
        label: &str,
        extra_env: &[(&str, &str)],
    ) -> ServiceProcess {
        let path = agent_binary().with_file_name(binary);
        std::fs::create_dir_all(env.dir()).expect("test dir");
        let config = env.dir().join("config.toml");
        // Written whole, then renamed: a service starting meanwhile never reads a half-written file.
        let staged = env.dir().join(format!("config.toml.{label}"));
        std::fs::write(&staged, &env.toml).expect("config written");
        std::fs::rename(&staged, &config).expect("config in place");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.dir().join(format!("{label}.log")))
            .expect("log file");
        let log_err = log.try_clone().expect("log handle");
        let child = std::process::Command::new(&path)
            .arg("--config")
            .arg(&config)
            .envs(env.overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", path.display()));
        ServiceProcess { child }
    }

    /// SIGKILL: no shutdown, no goodbye to RabbitMQ.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How it ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service running in the test, stopped when dropped.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stopped));
        Running {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Whether the service is still running (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Stops the service and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
            assert!(stopped.is_ok(), "the service did not stop within 30 s");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The api, running on a random port.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub service: Running,
}

pub async fn spawn_app(env: &TestEnv) -> TestApp {
    spawn_app_with(env.settings.clone()).await
}

/// The api with settings of the test's choosing.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let app = spot_api::Application::build(settings)
        .await
        .expect("api builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let service = Running::spawn(|stopped| async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        service,
    }
}

/// The provisioner, with agents told to reach the api at `api_url`.
pub async fn spawn_provisioner(env: &TestEnv, api_url: &str) -> Running {
    spawn_provisioner_with(env.settings.clone(), api_url).await
}

/// The provisioner with settings of the test's choosing (a short reconcile period, say).
pub async fn spawn_provisioner_with(mut settings: Settings, api_url: &str) -> Running {
    settings.api.public_url = api_url.to_string();
    let provisioner = spot_provisioner::Provisioner::build(settings)
        .await
        .expect("provisioner builds");
    run_provisioner(provisioner)
}

/// Runs a provisioner a test built (and may have driven by hand first) until the returned handle
/// stops it.
pub fn run_provisioner(provisioner: spot_provisioner::Provisioner) -> Running {
    Running::spawn(|stopped| async move {
        provisioner
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
    })
}

pub async fn spawn_reaper(env: &TestEnv) -> Running {
    let reaper = spot_reaper::Reaper::build(env.settings.clone())
        .await
        .expect("reaper builds");
    Running::spawn(|stopped| async move {
        reaper
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// POSTs a raw body with the account's key.
    pub async fn post_raw(&self, path: &str, key: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("X-Auth-Token", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs a form-encoded body with the account's key (HRM's tasks).
    pub async fn post_form(&self, path: &str, key: &str, form: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("X-Auth-Token", key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-Auth-Token", key)
            .send()
            .await
            .expect("request sent")
    }

    /// `POST /v1/jobs`; returns the job's id.
    pub async fn create_job(&self, key: &str, body: serde_json::Value) -> String {
        let response = self.post_raw("/v1/jobs", key, &body.to_string()).await;
        let status = response.status();
        let reply: serde_json::Value = response.json().await.expect("JSON reply");
        assert_eq!(status, 201, "{reply}");
        reply["id"].as_str().expect("job id").to_string()
    }

    /// The runs of a job, newest first.
    /// `POST /v1/jobs/{id}/run` with the acme key: a run now, which must be accepted.
    pub async fn run_now(&self, job_id: &str) {
        let response = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/jobs/{job_id}/run"),
                ACCOUNT_KEY,
                None,
            )
            .await;
        assert_eq!(response.status(), 202, "run now of {job_id}");
    }

    pub async fn runs(&self, job_id: &str) -> Vec<serde_json::Value> {
        let response = self
            .get(&format!("/v1/jobs/{job_id}/runs?limit=1000"), ACCOUNT_KEY)
            .await;
        assert_eq!(response.status(), 200);
        let reply: serde_json::Value = response.json().await.expect("JSON reply");
        reply["runs"].as_array().cloned().unwrap_or_default()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("X-Auth-Token", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    /// A run's output, as `GET /v1/runs/{id}/logs` gives it to its account.
    pub async fn run_log(&self, run: &serde_json::Value) -> String {
        let id = run["id"].as_str().expect("a run with an id");
        let response = self.get(&format!("/v1/runs/{id}/logs"), ACCOUNT_KEY).await;
        assert_eq!(response.status(), 200, "the log of {id}");
        response.text().await.expect("a log")
    }

    /// `GET /status/{id}` as JSON.
    pub async fn status(&self, id: &str) -> serde_json::Value {
        let response = self.get(&format!("/status/{id}"), ACCOUNT_KEY).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("status is JSON")
    }
}

/// What `spotctl ARGS` prints (its table), pointed at `app` with `key` and no config file of the
/// user's.
pub async fn spotctl_output(env: &TestEnv, app: &TestApp, key: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(workspace_binary("spotctl"))
        .args(args)
        .env("SPOT_API_URL", &app.address)
        .env("SPOT_API_KEY", key)
        .env("XDG_CONFIG_HOME", env.dir())
        .env_remove("VISUAL")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("spotctl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The store of `env` and a job created through its api (the account's first), to copy.
pub async fn stored_template(
    env: &TestEnv,
) -> (spot_shared::store::Store, spot_shared::model::Job) {
    let store = env.store().await;
    let app = spawn_app(env).await;
    let id = app
        .create_job(
            ACCOUNT_KEY,
            serde_json::json!({"schedule": "@hourly", "runner": {"type": "dummy", "template": "x"}}),
        )
        .await;
    let template = store.get_job(&id).await.unwrap().unwrap();
    app.service.stop().await;
    (store, template)
}

/// Waits until the api at `base` answers `/healthcheck` with 200 (Redis and RabbitMQ reachable).
pub async fn wait_until_healthy(base: &str, limit: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    while client
        .get(format!("{base}/healthcheck"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{base} was not healthy within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Polls `check` until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 30 s for the instance to be recorded `terminated`.
pub async fn assert_terminated(store: &Store, instance_id: &str) {
    eventually(
        Duration::from_secs(30),
        "the instance terminated",
        || async {
            let instance = store.get_instance(instance_id).await.ok()??;
            (instance.state == spot_shared::model::InstanceState::Terminated).then_some(())
        },
    )
    .await
}

/// How many runs the jobs have, all told; `None` while Redis does not answer (for [`eventually`]).
pub async fn count_runs(store: &spot_shared::store::Store, jobs: &[String]) -> Option<usize> {
    let mut runs = 0;
    for job in jobs {
        runs += store.job_run_ids(job, 0).await.ok()?.len();
    }
    Some(runs)
}

/// Waits up to `limit` until every job has a run, then 2 s more for a duplicate to show, and fails
/// unless each has exactly one.
pub async fn assert_each_fires_once(store: &Store, jobs: &[String], limit: Duration) {
    eventually(limit, "every job fired", || async {
        (count_runs(store, jobs).await? >= jobs.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for job in jobs {
        let runs = store.job_run_ids(job, 0).await.expect("Redis answers");
        assert_eq!(runs.len(), 1, "{job} fired once");
    }
}

/// When a run (as the api shows it) entered `state`, if it did.
pub fn entered(run: &serde_json::Value, state: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    run["transitions"][state]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// When a run (as the api shows it) ended, whichever way.
pub fn ended(run: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    use spot_shared::model::RunState;
    RunState::ALL
        .into_iter()
        .filter(|state| state.is_terminal())
        .find_map(|state| entered(run, state.as_str()))
}

/// Fails unless a run's recorded transitions, in time order, form a legal path of the run state
/// machine from `pending`.
pub fn assert_legal_history(run: &serde_json::Value) {
    use spot_shared::model::RunState;
    let transitions = run["transitions"].as_object().expect("transitions");
    let mut steps: Vec<(chrono::DateTime<chrono::Utc>, RunState)> = transitions
        .iter()
        .map(|(state, at)| {
            let state: RunState = state.parse().expect("a known state");
            let at = serde_json::from_value(at.clone()).expect("an instant");
            (at, state)
        })
        .collect();
    steps.sort();
    // A run starts pending, or queued behind the run before it (`concurrency: queue`).
    assert!(
        matches!(
            steps.first().map(|s| s.1),
            Some(RunState::Pending | RunState::Queued)
        ),
        "{run}"
    );
    for pair in steps.windows(2) {
        assert!(
            pair[0].1.can_move_to(pair[1].1),
            "illegal {} -> {} in {run}",
            pair[0].1,
            pair[1].1
        );
    }
    assert_eq!(
        steps.last().map(|s| s.1.as_str()),
        run["state"].as_str(),
        "{run}"
    );
}

/// A moto EC2 server of the test's own, on a free port; stopped when dropped.
pub struct Moto {
    pub endpoint: String,
    child: std::process::Child,
}

impl Moto {
    pub async fn start() -> Moto {
        aws_test_credentials();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server runs (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(60), "moto to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Moto { endpoint, child }
    }

    /// An EC2 client on this moto.
    pub async fn ec2(&self) -> spot_shared::instance_power::Ec2 {
        let mut settings = Settings::defaults().ec2;
        settings.endpoint_url = self.endpoint.clone();
        spot_shared::instance_power::Ec2::from_settings(&settings).await
    }
}

impl Moto {
    /// An instance on this moto tagged as `account`'s (spot-scheduler:account), stopped if `stopped`.
    pub async fn instance(&self, account: &str, stopped: bool) -> String {
        let id = self
            .run_instance(&[("spot-scheduler:account", account)])
            .await;
        if stopped {
            let ec2 = self.ec2().await;
            ec2.client()
                .call(
                    "StopInstances",
                    &spot_shared::aws::Params::new().list("InstanceId", [&id]),
                )
                .await
                .expect("moto stops it");
        }
        id
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto takes any credentials; the services read them from the standard environment variables.
fn aws_test_credentials() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        for (key, value) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            if std::env::var_os(key).is_none() {
                std::env::set_var(key, value);
            }
        }
    });
}
