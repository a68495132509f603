//! Playing EC2's part around moto, for tests of the `ec2` provider.
//!
//! - [`CloudPlayer`] does what EC2 and cloud-init would: it watches moto for the cluster's new instances,
//!   reads each one's user data, writes the boot file it carries and starts an agent with it; it serves
//!   each agent an instance metadata service (instance id, and a spot interruption notice on demand);
//!   and when moto says an instance is terminated, it stops that agent and its container.
//! - [`Ec2Proxy`] sits between the services and moto and injects EC2's documented failures: pools
//!   without spot capacity, throttling, and a launch call whose answer never comes back.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spot_shared::aws::{ec2, Params, QueryClient};
use spot_shared::cloud::ec2_fleet::{CLUSTER_TAG, RUN_TAG};

use crate::{agent_binary, eventually, Moto};

/// What the player knows of the instances it booted.
#[derive(Default)]
struct PlayerState {
    /// Agent processes by instance id.
    agents: HashMap<String, tokio::process::Child>,
    /// Instances already booted (or found without user data), never booted twice.
    seen: HashSet<String>,
    /// Instances whose metadata posts a spot interruption notice.
    interrupted: HashSet<String>,
}

pub struct CloudPlayer {
    state: Arc<Mutex<PlayerState>>,
    watcher: tokio::task::JoinHandle<()>,
    metadata: actix_web::dev::ServerHandle,
}

impl CloudPlayer {
    /// Starts playing the cloud for `cluster`'s instances on `moto`; agents log under `log_dir`.
    pub async fn start(moto: &Moto, cluster: &str, log_dir: PathBuf) -> CloudPlayer {
        std::fs::create_dir_all(&log_dir).expect("agent log dir");
        let state = Arc::new(Mutex::new(PlayerState::default()));
        let (metadata, metadata_url) = serve_metadata(state.clone());
        let client = moto.ec2().await.client().clone();
        let watcher = tokio::spawn(watch(
            client,
            cluster.to_string(),
            state.clone(),
            metadata_url,
            log_dir,
        ));
        CloudPlayer {
            state,
            watcher,
            metadata,
        }
    }

    /// Posts a spot interruption notice in the instance's metadata.
    pub fn interrupt(&self, instance_id: &str) {
        self.lock().interrupted.insert(instance_id.to_string());
    }

    /// Kills the instance's agent without a word (the instance lives on): a lost agent.
    pub fn kill_agent(&self, instance_id: &str) {
        if let Some(agent) = self.lock().agents.get(instance_id) {
            if let Some(pid) = agent.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }

    /// Instances the player has booted an agent on.
    pub fn booted(&self) -> Vec<String> {
        self.lock().agents.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlayerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops watching, and stops every agent it started with its container.
    pub async fn stop(self) {
        self.watcher.abort();
        let agents: Vec<(String, tokio::process::Child)> = self.lock().agents.drain().collect();
        for (instance_id, agent) in agents {
            stop_agent(&instance_id, agent).await;
        }
        self.metadata.stop(false).await;
    }
}

async fn stop_agent(instance_id: &str, mut agent: tokio::process::Child) {
    if let Some(pid) = agent.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), agent.wait())
        .await
        .is_err()
    {
        let _ = agent.kill().await;
    }
    let _ = spot_shared::cloud::local::remove_labelled_containers(instance_id).await;
}

/// Every 200 ms: boots new running instances, stops the agents of terminated ones.
async fn watch(
    client: QueryClient,
    cluster: String,
    state: Arc<Mutex<PlayerState>>,
    metadata_url: String,
    log_dir: PathBuf,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let params = Params::new().filter(&format!("tag:{CLUSTER_TAG}"), [&cluster]);
        let Ok(pages) = ec2::describe_instances(&client, params).await else {
            continue;
        };
        for instance in pages.iter().flat_map(ec2::instances) {
            let Some(id) = instance.text_at(&["instanceId"]).map(str::to_string) else {
                continue;
            };
            let state_name = instance
                .text_at(&["instanceState", "name"])
                .unwrap_or_default();
            if state_name == "running" {
                let new = state
                    .lock()
                    .map(|mut s| s.seen.insert(id.clone()))
                    .unwrap_or(false);
                if new {
                    if let Some(agent) = boot(&client, &id, &metadata_url, &log_dir).await {
                        if let Ok(mut s) = state.lock() {
                            s.agents.insert(id, agent);
                        }
                    }
                }
            } else if matches!(state_name, "shutting-down" | "terminated") {
                let agent = state.lock().ok().and_then(|mut s| s.agents.remove(&id));
                if let Some(agent) = agent {
                    stop_agent(&id, agent).await;
                }
            }
        }
    }
}

/// What cloud-init would do with the instance's user data: write the boot file, start the agent.
async fn boot(
    client: &QueryClient,
    instance_id: &str,
    metadata_url: &str,
    log_dir: &std::path::Path,
) -> Option<tokio::process::Child> {
    let params = Params::new()
        .set("InstanceId", instance_id)
        .set("Attribute", "userData");
    let attribute = client
        .call("DescribeInstanceAttribute", &params)
        .await
        .ok()?;
    let encoded = attribute.text_at(&["userData", "value"])?.to_string();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let boot =
        spot_shared::cloud::user_data::boot_from_user_data(&String::from_utf8(user_data).ok()?)?;
    let boot_file = log_dir.join(format!("{instance_id}.boot.json"));
    std::fs::write(&boot_file, serde_json::to_vec(&boot).ok()?).ok()?;
    let log = std::fs::File::create(log_dir.join(format!("{instance_id}.log"))).ok()?;
    let log_err = log.try_clone().ok()?;
    tokio::process::Command::new(agent_binary())
        .arg("--boot-file")
        .arg(&boot_file)
        .env(
            "SPOT_AGENT_METADATA_URL",
            format!("{metadata_url}/{instance_id}"),
        )
        .env("SPOT_AGENT_INTERRUPTION_POLL_SECS", "1")
        .env("SPOT_AGENT_HEARTBEAT_SECS", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .ok()
}

/// The instance metadata service of every instance, under `/{instance_id}/latest/...`.
fn serve_metadata(state: Arc<Mutex<PlayerState>>) -> (actix_web::dev::ServerHandle, String) {
    let state = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/{id}/latest/api/token",
                web::put().to(|path: web::Path<String>| async move {
                    HttpResponse::Ok().body(format!("token-{path}"))
                }),
            )
            .route(
                "/{id}/latest/meta-data/instance-id",
                web::get().to(|path: web::Path<String>| async move {
                    HttpResponse::Ok().body(path.into_inner())
                }),
            )
            .route(
                "/{id}/latest/meta-data/spot/instance-action",
                web::get().to(
                    |path: web::Path<String>, state: web::Data<Mutex<PlayerState>>| async move {
                        let posted = state
                            .lock()
                            .map(|s| s.interrupted.contains(path.as_str()))
                            .unwrap_or(false);
                        if posted {
                            let time = (chrono::Utc::now() + chrono::Duration::minutes(2))
                                .format("%Y-%m-%dT%H:%M:%SZ");
                            HttpResponse::Ok()
                                .json(serde_json::json!({"action": "terminate", "time": time.to_string()}))
                        } else {
                            HttpResponse::NotFound().finish()
                        }
                    },
                ),
            )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("metadata server binds");
    let url = format!("http://127.0.0.1:{}", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (handle, url)
}

/// Faults the proxy injects.
#[derive(Default)]
pub struct Faults {
    /// Answer spot fleets with EC2's "no capacity" errors per pool and no instance.
    pub no_spot_capacity: AtomicBool,
    /// Answer this many calls with `RequestLimitExceeded` (HTTP 503) before passing calls on.
    pub throttle_calls: AtomicUsize,
    /// Pass CreateFleet on to moto, then never answer (the caller dies waiting).
    pub hold_create_fleet: AtomicBool,
    /// Counts, for assertions.
    pub throttled: AtomicUsize,
    pub fleets_forwarded: AtomicUsize,
    /// Every CreateLaunchTemplate request's parameters (moto does not apply all of them).
    pub launch_templates: std::sync::Mutex<Vec<HashMap<String, String>>>,
}

/// A fault-injecting proxy in front of moto's EC2 API.
pub struct Ec2Proxy {
    pub endpoint: String,
    pub faults: Arc<Faults>,
    handle: actix_web::dev::ServerHandle,
}

struct ProxyState {
    moto: String,
    http: reqwest::Client,
    faults: Arc<Faults>,
}

impl Ec2Proxy {
    pub fn start(moto: &Moto) -> Ec2Proxy {
        let faults = Arc::new(Faults::default());
        let state = web::Data::new(ProxyState {
            moto: moto.endpoint.clone(),
            http: reqwest::Client::new(),
            faults: faults.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .default_service(web::to(proxy))
        })
        .workers(2)
        .bind(("127.0.0.1", 0))
        .expect("proxy binds");
        let endpoint = format!("http://127.0.0.1:{}", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ec2Proxy {
            endpoint,
            faults,
            handle,
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn proxy(req: HttpRequest, body: web::Bytes, state: web::Data<ProxyState>) -> HttpResponse {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let action = form.get("Action").map(String::as_str).unwrap_or("");
    let faults = &state.faults;
    if action == "CreateLaunchTemplate" {
        if let Ok(mut seen) = faults.launch_templates.lock() {
            seen.push(form.clone());
        }
    }
    if faults
        .throttle_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        faults.throttled.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::ServiceUnavailable()
            .content_type("text/xml")
            .body(THROTTLED);
    }
    let spot = form
        .get("TargetCapacitySpecification.DefaultTargetCapacityType")
        .is_some_and(|t| t == "spot");
    if action == "CreateFleet" && spot && faults.no_spot_capacity.load(Ordering::SeqCst) {
        return HttpResponse::Ok()
            .content_type("text/xml")
            .body(no_spot_capacity(&form));
    }
    let mut forward = state
        .http
        .request(
            reqwest::Method::from_bytes(req.method().as_str().as_bytes())
                .unwrap_or(reqwest::Method::POST),
            format!("{}{}", state.moto, req.uri()),
        )
        .body(body.to_vec());
    for (name, value) in req.headers() {
        if name != "host" && name != "content-length" {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(response) = forward.send().await else {
        return HttpResponse::BadGateway().finish();
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_string();
    let bytes = response.bytes().await.unwrap_or_default();
    if action == "CreateFleet" {
        faults.fleets_forwarded.fetch_add(1, Ordering::SeqCst);
        while faults.hold_create_fleet.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status.as_u16()).unwrap_or_default())
        .content_type(content_type)
        .body(bytes)
}

/// EC2's throttling answer.
const THROTTLED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>5b3bd6c9-proxy-throttle</RequestID></Response>"#;

/// EC2's answer to an `instant` fleet that found no spot capacity: an error per pool, no instance.
fn no_spot_capacity(form: &HashMap<String, String>) -> String {
    let template = form
        .get("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId")
        .cloned()
        .unwrap_or_default();
    let mut items = String::new();
    for n in 1.. {
        let Some(instance_type) = form.get(&format!(
            "LaunchTemplateConfigs.1.Overrides.{n}.InstanceType"
        )) else {
            break;
        };
        items.push_str(&format!(
            "<item><launchTemplateAndOverrides><launchTemplateSpecification>\
             <launchTemplateId>{template}</launchTemplateId><version>1</version>\
             </launchTemplateSpecification><overrides><instanceType>{instance_type}</instanceType>\
             </overrides></launchTemplateAndOverrides><lifecycle>spot</lifecycle>\
             <errorCode>InsufficientInstanceCapacity</errorCode><errorMessage>We currently do not have \
             sufficient {instance_type} capacity in the Availability Zone you requested (us-east-1a).\
             </errorMessage></item>"
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>7f3c1c8e-proxy</requestId><fleetId>fleet-00000000-0000-0000-0000-000000000000</fleetId><errorSet>{items}</errorSet><fleetInstanceSet/></CreateFleetResponse>"#
    )
}

impl Moto {
    /// The cluster's instances in moto, tagged with `run_id` if given: (id, state, lifecycle, tags).
    pub async fn cluster_instances(
        &self,
        cluster: &str,
        run_id: Option<&str>,
    ) -> Vec<(String, String, Option<String>, HashMap<String, String>)> {
        let ec2 = self.ec2().await;
        let mut params = Params::new().filter(&format!("tag:{CLUSTER_TAG}"), [cluster]);
        if let Some(run_id) = run_id {
            params = params.filter(&format!("tag:{RUN_TAG}"), [run_id]);
        }
        let pages = ec2::describe_instances(ec2.client(), params)
            .await
            .expect("moto describes instances");
        pages
            .iter()
            .flat_map(ec2::instances)
            .map(|i| {
                let text = |path: &[&str]| i.text_at(path).unwrap_or_default().to_string();
                (
                    text(&["instanceId"]),
                    text(&["instanceState", "name"]),
                    i.text_at(&["instanceLifecycle"]).map(str::to_string),
                    i.tags().into_iter().collect(),
                )
            })
            .collect()
    }

    /// Waits until no instance of the cluster is pending or running.
    pub async fn assert_none_running(&self, cluster: &str) {
        eventually(
            Duration::from_secs(60),
            "no running instance of the cluster",
            || async {
                let live: Vec<_> = self
                    .cluster_instances(cluster, None)
                    .await
                    .into_iter()
                    .filter(|(_, state, _, _)| state == "pending" || state == "running")
                    .collect();
                live.is_empty().then_some(())
            },
        )
        .await;
    }

    /// A running instance with these tags, as if someone else had launched it.
    pub async fn run_instance(&self, tags: &[(&str, &str)]) -> String {
        let ec2 = self.ec2().await;
        let params = Params::new()
            .set("ImageId", self.image_id().await)
            .set("MinCount", "1")
            .set("MaxCount", "1")
            .set("TagSpecification.1.ResourceType", "instance")
            .tags("TagSpecification.1", tags.iter().copied());
        let answer = ec2
            .client()
            .call("RunInstances", &params)
            .await
            .expect("moto runs an instance");
        let id = ec2::instances(&answer)
            .find_map(|i| i.text_at(&["instanceId"]))
            .expect("an instance id")
            .to_string();
        id
    }

    /// The id of an image moto knows.
    pub async fn image_id(&self) -> String {
        let ec2 = self.ec2().await;
        let images = ec2
            .client()
            .call("DescribeImages", &Params::new())
            .await
            .expect("moto images");
        let id = images
            .items(&["imagesSet"])
            .find_map(|image| image.text_at(&["imageId"]))
            .expect("an image id")
            .to_string();
        id
    }
}
