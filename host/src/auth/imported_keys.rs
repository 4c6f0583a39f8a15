//! API keys that clients of the systems taskhost replaces already hold (`CRAWLER_API_TOKEN`,
//! `demo-api-key-2024`, an agent tracker's `API_KEY`), imported by the operator in config and
//! mapped to a principal and role. Only their SHA-256 is kept once the host has started; the
//! key itself may come from the config file, from an environment variable, or be given as its
//! digest so that the file holds no secret.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Principal, Role};

/// Shortest key accepted: below it a key is guessable whatever the rate limit.
pub const MIN_KEY_CHARS: usize = 8;

/// One imported key as the operator writes it: exactly one of `key`, `key_env`, `key_sha256`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedKey {
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// The environment variable holding the key, read at start.
    #[serde(default)]
    pub key_env: Option<String>,
    /// The key's SHA-256, hex.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// The principal requests with this key act as (a user of that name need not exist).
    pub user: String,
    pub role: Role,
}

impl fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportedKey")
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("key_env", &self.key_env)
            .field("key_sha256", &self.key_sha256)
            .field("user", &self.user)
            .field("role", &self.role)
            .finish()
    }
}

impl ImportedKey {
    /// The key's digest, from whichever form it was given in; `Err` says what is wrong
    /// (never with the key in it).
    fn digest(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let plain = match (&self.key, &self.key_env, &self.key_sha256) {
            (Some(key), None, None) => key.clone(),
            (None, Some(var), None) => env(var)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| format!("environment variable {var} is not set"))?,
            (None, None, Some(digest)) => {
                let digest = digest.to_ascii_lowercase();
                if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err("key_sha256 must be 64 hex digits".into());
                }
                return Ok(digest);
            }
            _ => return Err("give exactly one of key, key_env and key_sha256".into()),
        };
        if plain.chars().count() < MIN_KEY_CHARS || plain.chars().any(char::is_whitespace) {
            return Err(format!(
                "a key is at least {MIN_KEY_CHARS} characters without spaces"
            ));
        }
        Ok(super::sha256_hex(&plain))
    }
}

/// The imported keys by digest.
#[derive(Default, Clone)]
pub struct ImportedKeys {
    by_digest: HashMap<String, (String, Role)>,
}

impl fmt::Debug for ImportedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImportedKeys({} keys)", self.by_digest.len())
    }
}

impl ImportedKeys {
    /// Digests `keys` (`where_` names their config section in errors), reading `key_env`
    /// through `env`. Two entries with one key are an error: which principal would it be?
    pub fn import<'a>(
        groups: impl IntoIterator<Item = (&'a str, &'a [ImportedKey])>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut imported = Self::default();
        for (section, keys) in groups {
            for (n, key) in keys.iter().enumerate() {
                let at = |e: String| format!("{section}.api_keys[{n}]: {e}");
                if !super::valid_username(&key.user) {
                    return Err(at(format!("user {:?} is not a valid username", key.user)));
                }
                let digest = key.digest(env).map_err(at)?;
                if imported
                    .by_digest
                    .insert(digest, (key.user.clone(), key.role))
                    .is_some()
                {
                    return Err(at("the same key is imported twice".into()));
                }
            }
        }
        Ok(imported)
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The principal of `key`, if it is an imported one.
    pub fn principal(&self, key: &str) -> Option<Principal> {
        self.by_digest
            .get(&super::sha256_hex(key))
            .map(|(user, role)| Principal::with_role(user, *role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: Option<&str>, env: Option<&str>, digest: Option<&str>) -> ImportedKey {
        ImportedKey {
            key: key.map(str::to_owned),
            key_env: env.map(str::to_owned),
            key_sha256: digest.map(str::to_owned),
            user: "tracker".into(),
            role: Role::User,
        }
    }

    #[test]
    fn a_key_given_plain_from_the_environment_or_as_its_digest_finds_its_principal() {
        let env = |var: &str| (var == "API_KEY").then(|| "from-the-environment".to_owned());
        let digest = super::super::sha256_hex("given-as-digest");
        let keys = [
            key(Some("demo-api-key-2024"), None, None),
            key(None, Some("API_KEY"), None),
            key(None, None, Some(&digest.to_ascii_uppercase())),
        ];
        let imported =
            ImportedKeys::import([("compat.agent_tracker", &keys[..])], &env).expect("imported");
        for plain in [
            "demo-api-key-2024",
            "from-the-environment",
            "given-as-digest",
        ] {
            let principal = imported.principal(plain).expect("known");
            assert_eq!(
                (principal.name.as_str(), principal.role),
                ("tracker", Role::User)
            );
        }
        assert!(imported.principal("demo-api-key-2025").is_none());
        assert!(
            !format!("{:?}", keys[0]).contains("demo-api-key"),
            "Debug hides the key"
        );
    }

    #[test]
    fn short_missing_ambiguous_and_duplicate_keys_are_refused_without_showing_them() {
        let env = |_: &str| None;
        for (bad, expected) in [
            (key(Some("short"), None, None), "at least 8"),
            (key(None, Some("UNSET"), None), "UNSET is not set"),
            (key(Some("long-enough-key"), Some("X"), None), "exactly one"),
            (key(None, None, None), "exactly one"),
            (key(None, None, Some("abc")), "64 hex"),
        ] {
            let error = ImportedKeys::import([("compat.x", std::slice::from_ref(&bad))], &env)
                .expect_err("refused");
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("long-enough-key") && !error.contains("short\""));
        }
        let twice = [
            key(Some("same-key-twice"), None, None),
            key(Some("same-key-twice"), None, None),
        ];
        let error = ImportedKeys::import([("compat.x", &twice[..])], &env).expect_err("refused");
        assert!(error.contains("twice"), "{error}");
    }
}
