use anyhow::Context;
use spot_shared::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config_path = spot_shared::config::config_path_from_args();
    let settings = Settings::load(config_path.as_deref()).context("loading configuration")?;
    spot_shared::telemetry::init(&settings.log);
    spot_api::run(settings).await
}
