//! Cloud providers: how an instance for a run is launched, found again, and terminated.
//!
//! `local` is the default: an "instance" is a `spot-agent` process on this host running its container on
//! the local Docker engine, so the whole system runs on one machine with no cloud account. The process is
//! tagged with its instance id on its command line (`--instance-id ID`), which is how a second launch of
//! the same run finds it instead of starting another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::{CloudSettings, LocalCloudSettings, ProviderKind};
use crate::error::{Error, Result};

/// Docker label carrying the instance id on every container an agent starts.
pub const INSTANCE_LABEL: &str = "spot-scheduler.instance";
/// Docker label carrying the run id.
pub const RUN_LABEL: &str = "spot-scheduler.run";

/// What an agent needs to know, handed to the instance at launch (env locally, user data on EC2).
#[derive(Debug, Clone)]
pub struct AgentBoot {
    pub run_id: String,
    pub api_url: String,
    pub secret: String,
}

/// What a launch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: Option<String>,
    pub dns_name: Option<String>,
    pub ip_address: Option<String>,
}

/// The configured provider.
pub enum Cloud {
    Local(LocalCloud),
}

impl Cloud {
    pub fn from_settings(settings: &CloudSettings) -> Result<Cloud> {
        match settings.provider {
            ProviderKind::Local => Ok(Cloud::Local(LocalCloud::new(&settings.local)?)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Cloud::Local(_) => "local",
        }
    }

    /// The instance id a run's attempt gets, when the provider chooses ids itself.
    pub fn instance_id_for(&self, run_id: &str, attempt: u32) -> String {
        match self {
            Cloud::Local(_) => format!("local-{run_id}-{attempt}"),
        }
    }

    /// Whether the instance is alive (so a repeated launch must not start another).
    pub async fn find(&self, instance_id: &str) -> Result<Option<Launched>> {
        match self {
            Cloud::Local(local) => Ok(local.find(instance_id).map(|_| local.launched(instance_id))),
        }
    }

    pub async fn launch(&self, instance_id: &str, boot: &AgentBoot) -> Result<Launched> {
        match self {
            Cloud::Local(local) => local.launch(instance_id, boot).await,
        }
    }

    /// Terminates the instance; succeeds if it is already gone.
    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        match self {
            Cloud::Local(local) => local.terminate(instance_id).await,
        }
    }
}

/// Agents as processes on this host.
pub struct LocalCloud {
    agent_bin: PathBuf,
    log_dir: PathBuf,
}

impl LocalCloud {
    pub fn new(settings: &LocalCloudSettings) -> Result<LocalCloud> {
        let agent_bin = if settings.agent_bin.is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("spot-agent")))
                .ok_or_else(|| Error::internal("cannot locate spot-agent beside this executable"))?
        } else {
            PathBuf::from(&settings.agent_bin)
        };
        Ok(LocalCloud {
            agent_bin,
            log_dir: settings.log_dir.clone(),
        })
    }

    fn launched(&self, instance_id: &str) -> Launched {
        Launched {
            instance_id: instance_id.to_string(),
            instance_type: Some("local".to_string()),
            dns_name: Some("localhost".to_string()),
            ip_address: Some("127.0.0.1".to_string()),
        }
    }

    /// The pid of the agent process tagged with this instance id, if one is alive.
    pub fn find(&self, instance_id: &str) -> Option<Pid> {
        find_tagged_process(Path::new("/proc"), instance_id)
    }

    async fn launch(&self, instance_id: &str, boot: &AgentBoot) -> Result<Launched> {
        if self.find(instance_id).is_some() {
            return Ok(self.launched(instance_id));
        }
        std::fs::create_dir_all(&self.log_dir).map_err(|e| {
            Error::unavailable(format!("cannot create {}: {e}", self.log_dir.display()))
        })?;
        let log_path = self.log_dir.join(format!("{instance_id}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| {
            Error::unavailable(format!("cannot create {}: {e}", log_path.display()))
        })?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::unavailable(format!("cannot clone log handle: {e}")))?;
        let mut child = tokio::process::Command::new(&self.agent_bin)
            .arg("--instance-id")
            .arg(instance_id)
            .env("SPOT_AGENT_RUN_ID", &boot.run_id)
            .env("SPOT_AGENT_API_URL", &boot.api_url)
            .env("SPOT_AGENT_SECRET", &boot.secret)
            .env("SPOT_AGENT_INSTANCE_ID", instance_id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: stopping the provisioner (Ctrl-C) must not stop running jobs.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::unavailable(format!(
                    "cannot start agent {}: {e}",
                    self.agent_bin.display()
                ))
            })?;
        // Reap the child when it exits so it leaves no zombie behind.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(self.launched(instance_id))
    }

    async fn terminate(&self, instance_id: &str) -> Result<()> {
        if let Some(pid) = self.find(instance_id) {
            // SIGTERM lets the agent stop and remove its container; SIGKILL if it does not go.
            let _ = kill(pid, Signal::SIGTERM);
            for _ in 0..100 {
                if self.find(instance_id).is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(pid) = self.find(instance_id) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        remove_labelled_containers(instance_id).await
    }
}

/// Removes every container labelled with the instance: nothing of a terminated instance is left running.
async fn remove_labelled_containers(instance_id: &str) -> Result<()> {
    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("{INSTANCE_LABEL}={instance_id}")],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker.list_containers(Some(options)).await? {
        if let Some(id) = container.id {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            match docker.remove_container(&id, Some(options)).await {
                Ok(()) => {}
                // Gone already, or being removed by its agent.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

/// Scans `/proc` for a process whose command line holds `--instance-id <id>`.
fn find_tagged_process(proc_root: &Path, instance_id: &str) -> Option<Pid> {
    tagged_processes(proc_root, instance_id).into_iter().next()
}

/// Every live process whose command line holds `--instance-id <id>`: more than one would be a
/// duplicate launch.
pub fn tagged_processes(proc_root: &Path, instance_id: &str) -> Vec<Pid> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if is_tagged(&cmdline, instance_id) && !is_zombie(&entry.path()) {
            found.push(Pid::from_raw(pid));
        }
    }
    found
}

fn is_tagged(cmdline: &[u8], instance_id: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|pair| pair[0] == b"--instance-id" && pair[1] == instance_id.as_bytes())
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_matched_whole() {
        let cmdline = b"/bin/spot-agent\0--instance-id\0local-abc-1\0";
        assert!(is_tagged(cmdline, "local-abc-1"));
        assert!(!is_tagged(cmdline, "local-abc"));
        assert!(!is_tagged(
            b"/bin/sh\0-c\0--instance-id local-abc-1\0",
            "local-abc-1"
        ));
    }

    #[test]
    fn finds_a_tagged_process_in_proc() {
        let mut child = std::process::Command::new("sleep")
            .args(["30", "--instance-id", "local-test-find-1"])
            .spawn();
        // `sleep` with extra args may exit at once on some systems; only assert when it runs.
        if let Ok(child) = child.as_mut() {
            std::thread::sleep(Duration::from_millis(100));
            if child.try_wait().ok().flatten().is_none() {
                let found = find_tagged_process(Path::new("/proc"), "local-test-find-1");
                assert_eq!(found, Some(Pid::from_raw(child.id() as i32)));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            find_tagged_process(Path::new("/proc"), "local-nobody-1"),
            None
        );
    }
}
