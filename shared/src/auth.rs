//! Who is calling: maps an `X-Auth-Token` to an account, comparing against every configured key in
//! constant time so that timing reveals nothing about the keys.

use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::ids::hash_secret;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account: String,
    /// Admin keys may act on every account.
    pub admin: bool,
}

struct KeyEntry {
    key_hash: [u8; 64],
    principal: Principal,
}

/// The configured keys, kept only as hashes.
pub struct Keyring {
    entries: Vec<KeyEntry>,
}

impl Keyring {
    pub fn from_settings(settings: &AuthSettings) -> Keyring {
        let mut entries = Vec::new();
        for account in &settings.accounts {
            for key in &account.keys {
                entries.push(entry(key.expose_secret(), &account.name, false));
            }
        }
        for key in &settings.admin_keys {
            entries.push(entry(key.expose_secret(), "admin", true));
        }
        Keyring { entries }
    }

    /// The principal a token belongs to. Every entry is compared, whatever matches first.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if token.is_empty() {
            return None;
        }
        let presented = hash_bytes(token);
        let mut found: Option<&Principal> = None;
        for entry in &self.entries {
            let equal: bool = entry.key_hash.ct_eq(&presented).into();
            if equal && found.is_none() {
                found = Some(&entry.principal);
            }
        }
        found.cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn hash_bytes(key: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out.copy_from_slice(hash_secret(key).as_bytes());
    out
}

fn entry(key: &str, account: &str, admin: bool) -> KeyEntry {
    KeyEntry {
        key_hash: hash_bytes(key),
        principal: Principal {
            account: account.to_string(),
            admin,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn keyring() -> Keyring {
        let settings = Settings::from_toml(
            r#"
            [auth]
            admin_keys = ["root-key"]
            [[auth.accounts]]
            name = "acme"
            keys = ["acme-1", "acme-2"]
            [[auth.accounts]]
            name = "globex"
            keys = ["globex-1"]
            "#,
        )
        .unwrap();
        Keyring::from_settings(&settings.auth)
    }

    #[test]
    fn keys_map_to_their_accounts() {
        let keys = keyring();
        assert_eq!(keys.authenticate("acme-2").unwrap().account, "acme");
        assert_eq!(keys.authenticate("globex-1").unwrap().account, "globex");
        assert!(keys.authenticate("root-key").unwrap().admin);
        assert!(!keys.authenticate("acme-1").unwrap().admin);
    }

    #[test]
    fn unknown_and_empty_keys_are_refused() {
        let keys = keyring();
        assert_eq!(keys.authenticate("acme-3"), None);
        assert_eq!(keys.authenticate(""), None);
        assert_eq!(keys.authenticate("ACME-1"), None);
    }
}
