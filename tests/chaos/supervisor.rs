//! The chaos harness's supervisor: runs each service as a process, kills one on request, and starts it
//! again after a second, as systemd or Kubernetes would; a service that exits by itself is counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spot_tests::{ServiceProcess, TestEnv};

/// How long a killed service stays down before its supervisor starts it again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A service under a supervisor that restarts it when it dies.
pub struct Supervised {
    pub label: &'static str,
    pub binary: &'static str,
    pub env: Vec<(String, String)>,
    pub process: Option<ServiceProcess>,
    /// When the chaos killed it (it is then restarted after [`RESTART_DELAY`]).
    pub killed_at: Option<Instant>,
}

#[derive(Default)]
pub struct Supervisor {
    pub services: Mutex<Vec<Supervised>>,
    pub unexpected_exits: AtomicUsize,
}

impl Supervisor {
    pub fn start(&self, env: &TestEnv, service: &mut Supervised) {
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
    pub fn tend(&self, env: &TestEnv) {
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

    pub fn kill(&self, label: &str) {
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

    /// SIGSTOP: the service stops where it is, holding its connections and leases, until
    /// [`Supervisor::unpause`].
    pub fn pause(&self, label: &str) {
        self.signal(label, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`Supervisor::pause`].
    pub fn unpause(&self, label: &str) {
        self.signal(label, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, label: &str, signal: nix::sys::signal::Signal) {
        let Ok(services) = self.services.lock() else {
            return;
        };
        let pid = services
            .iter()
            .find(|s| s.label == label)
            .and_then(|s| s.process.as_ref())
            .map(|p| nix::unistd::Pid::from_raw(p.pid() as i32));
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Kills a service and keeps it down until [`Supervisor::resume`].
    pub fn hold_down(&self, label: &str) {
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
    pub fn resume(&self, label: &str) {
        if let Ok(mut services) = self.services.lock() {
            if let Some(service) = services.iter_mut().find(|s| s.label == label) {
                service.killed_at = Some(Instant::now() - RESTART_DELAY);
            }
        }
    }

    /// SIGTERM to every service; each must exit 0 within its grace (plus a margin), else it counts
    /// as an unexpected exit.
    pub async fn stop_all(&self) {
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
