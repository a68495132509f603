use anyhow::Context;
use spot_shared::config::Settings;

// jemalloc: glibc's malloc and free took a quarter of the api's CPU under load, jemalloc's 6 %
// (BENCHMARKS.md), for a few MiB more resident memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let config_path = spot_shared::config::config_path_from_args();
    let settings = Settings::load(config_path.as_deref()).context("loading configuration")?;
    spot_shared::telemetry::init(&settings.log);
    spot_api::run_blocking(settings)
}
