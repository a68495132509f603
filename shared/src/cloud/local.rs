//! The `local` provider, the default: an "instance" is a `spot-agent` process on this host running its
//! container on the local Docker engine, so the whole system runs on one machine with no cloud account.
//! The process is tagged with its instance id on its command line (`--instance-id ID`), which is how a
//! second launch of the same run finds it instead of starting another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{AgentBoot, CloudInstance, Launched, INSTANCE_LABEL};
use crate::config::LocalCloudSettings;
use crate::error::{Error, Result};

/// Agents as processes on this host.
pub struct LocalCloud {
    agent_bin: PathBuf,
    log_dir: PathBuf,
    /// Names this deployment on its agents' command lines (`--cluster`), so deployments (and tests)
    /// sharing a host list and sweep only their own agents.
    cluster: String,
}

impl LocalCloud {
    pub fn new(settings: &LocalCloudSettings, cluster: &str) -> Result<LocalCloud> {
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
            cluster: cluster.to_string(),
        })
    }

    fn launched(&self, instance_id: &str) -> Launched {
        Launched {
            instance_id: instance_id.to_string(),
            instance_type: Some("local".to_string()),
            dns_name: Some("localhost".to_string()),
            ip_address: Some("127.0.0.1".to_string()),
            lifecycle: Some("local".to_string()),
            zone: None,
            pool_errors: Vec::new(),
        }
    }

    /// The instance id of a launch of a run's attempt: chosen here, so a repeated launch finds the
    /// same one. A relaunch (after the sweep terminated an instance that never started the
    /// container) gets an id of its own, `…r<relaunches>`, so the terminated one's record stays its own.
    pub fn instance_id_for(run_id: &str, attempt: u32, relaunches: u32) -> String {
        match relaunches {
            0 => format!("local-{run_id}-{attempt}"),
            n => format!("local-{run_id}-{attempt}r{n}"),
        }
    }

    /// The pid of the agent process tagged with this instance id, if one is alive.
    pub fn find(&self, instance_id: &str) -> Option<Pid> {
        find_tagged_process(Path::new("/proc"), instance_id)
    }

    /// The attempt's instance, whichever launch of it started it, if its agent is alive.
    pub fn find_launch(&self, run_id: &str, attempt: u32) -> Option<Launched> {
        let first = Self::instance_id_for(run_id, attempt, 0);
        let relaunched = format!("{first}r");
        tagged_instance_ids(Path::new("/proc"), &self.cluster)
            .into_iter()
            .find(|id| {
                *id == first
                    || id
                        .strip_prefix(&relaunched)
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|id| self.launched(&id))
    }

    /// Every live agent of this deployment, with the run its id names.
    pub fn instances(&self) -> Vec<CloudInstance> {
        tagged_instance_ids(Path::new("/proc"), &self.cluster)
            .into_iter()
            .filter_map(|id| {
                let rest = id.strip_prefix("local-")?;
                let (run_id, _attempt) = rest.rsplit_once('-')?;
                Some(CloudInstance {
                    run_id: Some(run_id.to_string()),
                    id,
                    // A local launch records its instance before starting the agent: no age is needed
                    // to rule out a launch still being recorded.
                    launched_at: None,
                })
            })
            .collect()
    }

    pub async fn launch(
        &self,
        run_id: &str,
        (attempt, relaunches): (u32, u32),
        boot: &AgentBoot,
        secret_values: &[(String, secrecy::SecretString)],
    ) -> Result<Launched> {
        let instance_id = Self::instance_id_for(run_id, attempt, relaunches);
        let instance_id = instance_id.as_str();
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
        let mut command = tokio::process::Command::new(&self.agent_bin);
        if !secret_values.is_empty() {
            use secrecy::ExposeSecret;
            let values: serde_json::Map<String, serde_json::Value> = secret_values
                .iter()
                .map(|(name, value)| (name.clone(), value.expose_secret().into()))
                .collect();
            command.env(
                crate::secrets::AGENT_SECRETS_VAR,
                serde_json::Value::Object(values).to_string(),
            );
        }
        let mut child = command
            .arg("--instance-id")
            .arg(instance_id)
            .arg("--cluster")
            .arg(&self.cluster)
            .env("SPOT_AGENT_RUN_ID", &boot.run_id)
            .env("SPOT_AGENT_API_URL", &boot.api_url)
            .env("SPOT_AGENT_SECRET", &boot.secret)
            .env("SPOT_AGENT_INSTANCE_ID", instance_id)
            .env("SPOT_AGENT_HEARTBEAT_SECS", boot.heartbeat_secs.to_string())
            // No instance metadata service here: nothing to watch for interruption.
            .env("SPOT_AGENT_METADATA_URL", "")
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

    pub async fn terminate(&self, instance_id: &str, stop_grace: Duration) -> Result<()> {
        if stop_grace.is_zero() {
            // At once, as a machine that goes away: the container first, then its agent.
            remove_labelled_containers(instance_id).await?;
        }
        if let Some(pid) = self.find(instance_id) {
            // SIGTERM lets the agent stop its container (its stop signal, then `stop_grace`) and
            // remove it; SIGKILL if it has not gone 10 s after that.
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now()
                + stop_grace.min(MAX_TERMINATE_GRACE)
                + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
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

/// The longest a terminate waits for an agent stopping its container gracefully: it holds one of
/// the reaper's deliveries meanwhile.
pub const MAX_TERMINATE_GRACE: Duration = Duration::from_secs(300);

/// Removes every container labelled with the instance: nothing of a terminated instance is left running.
pub async fn remove_labelled_containers(instance_id: &str) -> Result<()> {
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
    live_processes(proc_root)
        .into_iter()
        .filter(|(_, cmdline)| is_tagged(cmdline, instance_id))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every live (not zombie) process under `proc_root`, with its command line.
fn live_processes(proc_root: &Path) -> Vec<(Pid, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (!is_zombie(&entry.path())).then(|| (Pid::from_raw(pid), cmdline))
        })
        .collect()
}

fn is_tagged(cmdline: &[u8], instance_id: &str) -> bool {
    arg_value(cmdline, "--instance-id").is_some_and(|tag| tag == instance_id.as_bytes())
}

/// The value after `flag` on a command line.
fn arg_value<'a>(cmdline: &'a [u8], flag: &str) -> Option<&'a [u8]> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|pair| pair[0] == flag.as_bytes())
        .map(|pair| pair[1])
}

/// The instance ids of every live agent of `cluster`.
fn tagged_instance_ids(proc_root: &Path, cluster: &str) -> Vec<String> {
    live_processes(proc_root)
        .into_iter()
        .filter(|(_, cmdline)| arg_value(cmdline, "--cluster") == Some(cluster.as_bytes()))
        .filter_map(|(_, cmdline)| {
            arg_value(&cmdline, "--instance-id").map(|id| String::from_utf8_lossy(id).into_owned())
        })
        .collect()
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
