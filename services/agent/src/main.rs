use anyhow::Context;
use spot_agent::AgentSettings;

fn main() -> anyhow::Result<()> {
    let settings = AgentSettings::from_env().context("reading the agent's settings")?;
    spot_shared::telemetry::init(&spot_shared::config::LogSettings {
        format: spot_shared::config::LogFormat::Json,
        level: "info".into(),
    });
    spot_agent::run_blocking(settings)
}
