//! Which outbound URLs the system may call on a user's behalf (the http runner's action and callback
//! URLs), so that a job cannot make the scheduler reach inside its own host or network.
//!
//! Blocked unless `[outbound]` allows them: loopback, private ranges (10/8, 172.16/12, 192.168/16) and
//! link-local (169.254/16 and fe80::/10: the cloud metadata services). Blocked always: unspecified,
//! "this network" (0/8), carrier-grade NAT (100.64/10, which holds Alibaba Cloud's metadata address),
//! IETF protocol assignments (192.0.0/24, Oracle Cloud's metadata address), benchmarking, reserved and
//! multicast ranges, unique-local IPv6 (fc00::/7, EC2's IPv6 metadata address fd00:ec2::254 among
//! them), and IPv4 addresses wrapped in IPv6 (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`,
//! translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and `64:ff9b:1::/48`, 6to4 `2002:aabb:ccdd::`,
//! Teredo `2001::/32`), which are judged as the IPv4 address they carry.
//!
//! Names are judged before they are resolved too ([`blocked_name`]): `localhost` and any name under
//! it, with or without the trailing dot (`localhost.`), are loopback; the clouds' metadata names
//! (`metadata.google.internal`, `instance-data.ec2.internal`, ...) are refused always. So a name that
//! does not resolve at submit time is still refused there when the call would be.
//!
//! A name is resolved once, here; the caller connects to the addresses that were checked
//! ([`checked_addresses`]), never resolving again, so a name that answers differently the second time
//! (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Allow 127.0.0.0/8 and ::1 (tests, single-host setups).
    #[serde(default)]
    pub allow_loopback: bool,
    /// Allow 169.254.0.0/16 and fe80::/10, the cloud metadata service among them. Rarely wise.
    #[serde(default)]
    pub allow_link_local: bool,
    /// Allow 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16 (workers on the same private network).
    #[serde(default)]
    pub allow_private: bool,
}

/// Checks the form of a URL: http or https with a host. The reason is seed 001's word.
pub fn check_url(url: &str) -> std::result::Result<url::Url, &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "malformed_url")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err("malformed_url");
    }
    Ok(parsed)
}

/// Why an address may not be called, or `None` when it may.
pub fn blocked_because(address: IpAddr, settings: &OutboundSettings) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => blocked_v4(v4, settings),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => blocked_v4(v4, settings),
            None => blocked_v6(v6, settings),
        },
    }
}

/// Whether an address may be called.
pub fn address_allowed(address: IpAddr, settings: &OutboundSettings) -> bool {
    blocked_because(address, settings).is_none()
}

fn blocked_v4(v4: Ipv4Addr, settings: &OutboundSettings) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    if v4.is_loopback() {
        return (!settings.allow_loopback).then_some("loopback");
    }
    if v4.is_link_local() {
        return (!settings.allow_link_local).then_some("link-local (cloud metadata)");
    }
    if v4.is_private() {
        return (!settings.allow_private).then_some("private");
    }
    if a == 0 || v4.is_broadcast() {
        return Some("unspecified");
    }
    if a == 100 && (64..128).contains(&b) {
        return Some("carrier-grade NAT (cloud metadata)");
    }
    if a == 192 && b == 0 && c == 0 {
        return Some("IETF protocol assignments (cloud metadata)");
    }
    if a == 198 && (18..20).contains(&b) {
        return Some("benchmarking");
    }
    if v4.is_multicast() || a >= 240 {
        return Some("multicast or reserved");
    }
    None
}

fn blocked_v6(v6: Ipv6Addr, settings: &OutboundSettings) -> Option<&'static str> {
    let first = v6.segments()[0];
    if v6.is_loopback() {
        return (!settings.allow_loopback).then_some("loopback");
    }
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if first & 0xffc0 == 0xfe80 {
        return (!settings.allow_link_local).then_some("link-local (cloud metadata)");
    }
    if first & 0xfe00 == 0xfc00 {
        return Some("unique-local (cloud metadata)");
    }
    if first & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    None
}

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`,
/// deprecated but still routed by some stacks), translated (`::ffff:0:a.b.c.d`, SIIT), NAT64
/// (`64:ff9b::a.b.c.d` and the local-use `64:ff9b:1::/48`), 6to4 (`2002:aabb:ccdd::/48`) or Teredo
/// (`2001::/32`, the client's address inverted in the last 32 bits).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let v4_of =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    let low = v4_of(s[6], s[7]);
    let compatible = s[..6].iter().all(|x| *x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let translated = s[..4].iter().all(|x| *x == 0) && s[4] == 0xffff && s[5] == 0;
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    let nat64_local = s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1;
    if compatible || translated || nat64 || nat64_local {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(v4_of(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(v4_of(!s[6], !s[7]));
    }
    None
}

/// Names of the clouds' metadata services, refused whatever they resolve to (or fail to).
const METADATA_NAMES: [&str; 6] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

/// Why a host name may not be called whatever it resolves to, or `None`: `localhost` and names under
/// it are loopback (RFC 6761), the clouds' metadata names are always refused; a trailing dot and
/// letter case change nothing.
pub fn blocked_name(host: &str, settings: &OutboundSettings) -> Option<&'static str> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_NAMES.contains(&name.as_str()) {
        return Some("cloud metadata");
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return (!settings.allow_loopback).then_some("loopback");
    }
    None
}

/// Resolves the URL's host once and returns the addresses to connect to, refusing the URL if any
/// address it names is blocked (a name with one inside address is not half-allowed). The error says
/// only that the target is not allowed and why, naming the host as the caller gave it.
pub async fn checked_addresses(
    url: &url::Url,
    settings: &OutboundSettings,
) -> Result<Vec<SocketAddr>> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid("url", "has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Some(reason) = blocked_name(host, settings) {
        return Err(Error::forbidden(format!(
            "{host} is not an allowed target ({reason} names are blocked)"
        )));
    }
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Error::invalid("url", format!("cannot resolve {host}")))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(Error::invalid("url", format!("cannot resolve {host}")));
    }
    for address in &addresses {
        if let Some(reason) = blocked_because(address.ip(), settings) {
            return Err(Error::forbidden(format!(
                "{host} is not an allowed target ({reason} addresses are blocked)"
            )));
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(address: &str, settings: &OutboundSettings) -> bool {
        !address_allowed(address.parse().unwrap(), settings)
    }

    #[test]
    fn inside_addresses_are_refused_by_default() {
        let strict = OutboundSettings::default();
        for address in [
            "169.254.169.254",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "fe80::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "255.255.255.255",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.100.100.200",
            "100.64.0.1",
            "192.0.0.192",
            "fd00:ec2::254",
            "fc00::1",
            "224.0.0.1",
            "ff02::1",
            "240.0.0.1",
            "198.18.0.1",
            // IPv4 inside IPv6: mapped, compatible, NAT64.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            // Translated (SIIT), NAT64 local-use, 6to4, Teredo (client 127.0.0.1 inverted).
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(blocked(address, &strict), "{address}");
        }
        for address in [
            "93.184.216.34",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(!blocked(address, &strict), "{address}");
        }
    }

    #[test]
    fn settings_open_only_what_they_name() {
        let loopback = OutboundSettings {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(!blocked("127.0.0.1", &loopback));
        assert!(!blocked("::ffff:127.0.0.1", &loopback));
        assert!(blocked("169.254.169.254", &loopback));
        assert!(blocked("10.0.0.1", &loopback));
        let private = OutboundSettings {
            allow_private: true,
            ..Default::default()
        };
        assert!(!blocked("10.0.0.1", &private));
        assert!(!blocked("192.168.1.1", &private));
        assert!(blocked("100.100.100.200", &private));
        assert!(blocked("fd00:ec2::254", &private));
    }

    #[tokio::test]
    async fn a_name_is_judged_by_every_address_it_resolves_to() {
        let strict = OutboundSettings::default();
        let url = check_url("http://localhost:8080/x").unwrap();
        let err = checked_addresses(&url, &strict).await.unwrap_err();
        assert!(err.message.contains("loopback"), "{err}");
        let allowed = OutboundSettings {
            allow_loopback: true,
            ..Default::default()
        };
        let addresses = checked_addresses(&url, &allowed).await.unwrap();
        assert!(addresses
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    #[test]
    fn names_are_judged_before_they_resolve() {
        let strict = OutboundSettings::default();
        for name in [
            "localhost",
            "localhost.",
            "LOCALHOST..",
            "api.localhost",
            "metadata.google.internal",
            "metadata.google.internal.",
            "Metadata.Goog",
            "instance-data.ec2.internal",
        ] {
            assert!(blocked_name(name, &strict).is_some(), "{name}");
        }
        let loopback = OutboundSettings {
            allow_loopback: true,
            ..Default::default()
        };
        assert_eq!(blocked_name("localhost.", &loopback), None);
        assert!(blocked_name("metadata.google.internal", &loopback).is_some());
        assert_eq!(blocked_name("example.com", &strict), None);
        assert_eq!(blocked_name("notlocalhost", &strict), None);
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
