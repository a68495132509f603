//! Which outbound URLs the system may call on a user's behalf (the http runner's action and callback
//! URLs). Loopback, link-local (which holds the cloud metadata service) and unspecified addresses are
//! refused unless configuration allows them, so a job cannot make the scheduler attack its own host.

use std::net::IpAddr;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Allow 127.0.0.0/8 and ::1 (tests, single-host setups).
    #[serde(default)]
    pub allow_loopback: bool,
    /// Allow 169.254.0.0/16 and fe80::/10, the cloud metadata service among them. Rarely wise.
    #[serde(default)]
    pub allow_link_local: bool,
}

/// Checks the form of a URL: http or https with a host. The reason is seed 001's word.
pub fn check_url(url: &str) -> std::result::Result<url::Url, &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "malformed_url")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err("malformed_url");
    }
    Ok(parsed)
}

/// Whether an address may be called.
pub fn address_allowed(address: IpAddr, settings: &OutboundSettings) -> bool {
    let (loopback, link_local, unspecified) = match address {
        IpAddr::V4(v4) => (
            v4.is_loopback(),
            v4.is_link_local(),
            v4.is_unspecified() || v4.is_broadcast(),
        ),
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped();
            (
                v6.is_loopback() || mapped.is_some_and(|v4| v4.is_loopback()),
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || mapped.is_some_and(|v4| v4.is_link_local()),
                v6.is_unspecified(),
            )
        }
    };
    !unspecified
        && (!loopback || settings.allow_loopback)
        && (!link_local || settings.allow_link_local)
}

/// Resolves the URL's host and refuses it if any address it names is not allowed.
pub async fn check_target(url: &url::Url, settings: &OutboundSettings) -> Result<()> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid("url", "has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Error::invalid("url", format!("cannot resolve {host}: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    if addresses.is_empty() || addresses.iter().any(|a| !address_allowed(*a, settings)) {
        return Err(Error::forbidden(format!(
            "{host} is not an allowed target (loopback, link-local or metadata)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_loopback_and_link_local_are_refused_by_default() {
        let strict = OutboundSettings::default();
        for address in [
            "169.254.169.254",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                !address_allowed(address.parse().unwrap(), &strict),
                "{address}"
            );
        }
        for address in ["10.1.2.3", "93.184.216.34", "2001:db8::1"] {
            assert!(
                address_allowed(address.parse().unwrap(), &strict),
                "{address}"
            );
        }
        let loopback = OutboundSettings {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(address_allowed("127.0.0.1".parse().unwrap(), &loopback));
        assert!(!address_allowed(
            "169.254.169.254".parse().unwrap(),
            &loopback
        ));
    }

    #[test]
    fn urls_need_http_and_a_host() {
        assert_eq!(check_url("not a url").unwrap_err(), "malformed_url");
        assert_eq!(
            check_url("ftp://example.com/x").unwrap_err(),
            "malformed_url"
        );
        assert!(check_url("https://example.com/x?a=1").is_ok());
    }
}
