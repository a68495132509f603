//! Where the api is and which key to send: flags, then the environment (both through clap), then the
//! config file, then the default URL.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::Cli;
use crate::error::CtlError;

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    api_url: Option<String>,
    api_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: String,
    pub api_key: Option<String>,
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Result<Settings, CtlError> {
        let file = match &cli.config {
            Some(path) => read(path)?,
            None => match default_path() {
                Some(path) if path.exists() => read(&path)?,
                _ => ConfigFile::default(),
            },
        };
        let api_url = cli
            .api_url
            .clone()
            .or(file.api_url)
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        url::Url::parse(&api_url)
            .map_err(|err| CtlError::Usage(format!("api_url {api_url:?}: {err}")))?;
        Ok(Settings {
            api_url,
            api_key: cli.api_key.clone().or(file.api_key),
        })
    }
}

fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("spotctl").join("config.toml"))
}

fn read(path: &Path) -> Result<ConfigFile, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| CtlError::Usage(format!("{}: {err}", path.display())))?;
    toml::from_str(&text).map_err(|err| CtlError::Usage(format!("{}: {err}", path.display())))
}
