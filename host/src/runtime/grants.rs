//! Operator grants: what one plugin may touch (hosts, directories), its limits and its config.
//!
//! Grants are written as TOML beside a `.wasm` in the plugins directory or as JSON on upload;
//! both parse into [`Grants`]. Nothing is granted by default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the operator granted one plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub http: HttpGrant,
    /// Host directories preopened in the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsMount>,
    #[serde(default)]
    pub limits: Limits,
    /// Handed to every run of the plugin as `context.config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Delegation to registered runners, which run whatever commands a job names: off unless
    /// granted (the bundled `runner` and `build` plugins have it unless the operator says
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runners: Option<RunnersGrant>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnersGrant {
    /// Whether the plugin may list runners and dispatch jobs to them.
    #[serde(default)]
    pub allow: bool,
    /// Labels added to every job the plugin dispatches, so that its jobs go only to runners
    /// carrying them (a pool set aside for it).
    #[serde(default)]
    pub require_labels: Vec<String>,
}

impl RunnersGrant {
    /// Granted, with no pool.
    pub fn allowed() -> Self {
        Self {
            allow: true,
            require_labels: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `host`, `host:port`, `*.domain` or `*` (anything). Without a port, any port matches.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsMount {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Read-write when true; read-only otherwise.
    #[serde(default)]
    pub rw: bool,
}

/// Per-plugin limits. A task's own `timeout_s` can only lower `timeout_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_mb: u64,
    /// Wall-clock time one run may take (paused time does not count).
    pub timeout_s: u64,
    /// Instances of this plugin running at once.
    pub max_concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            timeout_s: 600,
            max_concurrency: 16,
        }
    }
}

/// Why a set of grants was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("grants are not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("grants are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Grants {
    pub fn from_toml(text: &str) -> Result<Self, GrantsError> {
        let grants: Grants = toml::from_str(text)?;
        grants.validate()?;
        Ok(grants)
    }

    pub fn from_json(text: &str) -> Result<Self, GrantsError> {
        let grants: Grants = serde_json::from_str(text)?;
        grants.validate()?;
        Ok(grants)
    }

    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings, numbers and maps cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks what serde cannot: patterns, mount paths and limit ranges.
    pub fn validate(&self) -> Result<(), GrantsError> {
        for pattern in &self.http.allow {
            HostPattern::parse(pattern)?;
        }
        for mount in &self.fs {
            if !mount.guest.starts_with('/') || mount.guest.contains("..") {
                return Err(GrantsError::Invalid(format!(
                    "fs guest path {:?} must be absolute and must not contain '..'",
                    mount.guest
                )));
            }
            if !mount.host.is_dir() {
                return Err(GrantsError::Invalid(format!(
                    "fs host directory {} does not exist",
                    mount.host.display()
                )));
            }
        }
        let limits = &self.limits;
        if !(1..=65_536).contains(&limits.memory_mb) {
            return Err(GrantsError::Invalid(
                "limits.memory_mb must be between 1 and 65536".into(),
            ));
        }
        if !(1..=7 * 86_400).contains(&limits.timeout_s) {
            return Err(GrantsError::Invalid(
                "limits.timeout_s must be between 1 and 604800".into(),
            ));
        }
        if !(1..=10_000).contains(&limits.max_concurrency) {
            return Err(GrantsError::Invalid(
                "limits.max_concurrency must be between 1 and 10000".into(),
            ));
        }
        Ok(())
    }

    /// Whether the plugin may connect to `host:port`.
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        self.http
            .allow
            .iter()
            .filter_map(|p| HostPattern::parse(p).ok())
            .any(|p| p.matches(host, port))
    }
}

/// One `http.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: strictly below the domain.
    Subdomain(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, GrantsError> {
        let invalid =
            || GrantsError::Invalid(format!("http.allow entry {pattern:?} is not host[:port]"));
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern.is_empty() || pattern.contains('/') || pattern.contains('@') {
            return Err(invalid());
        }
        // IPv6 literals are written in brackets: [::1]:8080
        let (host, port) = if let Some(rest) = pattern.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(invalid)?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port.parse::<u16>().map_err(|_| invalid())?),
                None if after.is_empty() => None,
                None => return Err(invalid()),
            };
            (inside.to_owned(), port)
        } else {
            match pattern.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    Some(port.parse::<u16>().map_err(|_| invalid())?),
                ),
                None => (pattern.clone(), None),
            }
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(invalid());
            }
            HostMatch::Subdomain(domain.to_owned())
        } else if host.is_empty() || host.contains('*') {
            return Err(invalid());
        } else {
            HostMatch::Exact(host)
        };
        Ok(Self { host, port })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => *exact == host,
            HostMatch::Subdomain(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_exact_wildcard_and_port() {
        let exact = HostPattern::parse("GitLab.example.com").unwrap();
        assert!(exact.matches("gitlab.example.com", 443));
        assert!(!exact.matches("evil-gitlab.example.com", 443));

        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches("a.example.com", 80));
        assert!(!sub.matches("example.com", 80));
        assert!(!sub.matches("badexample.com", 80));

        let port = HostPattern::parse("127.0.0.1:8080").unwrap();
        assert!(port.matches("127.0.0.1", 8080));
        assert!(!port.matches("127.0.0.1", 8081));

        let v6 = HostPattern::parse("[::1]:9000").unwrap();
        assert!(v6.matches("[::1]", 9000));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "http://x.com",
            "a.*.com",
            "*.",
            "host:port",
            "user@host",
            "[::1",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn grants_parse_from_toml_and_reject_unknown_fields() {
        let grants = Grants::from_toml(
            "[http]\nallow = [\"example.com\"]\n[limits]\nmemory_mb = 64\n[config]\nmode = \"fast\"\n",
        )
        .unwrap();
        assert!(grants.allows_host("example.com", 443));
        assert_eq!(grants.limits.memory_mb, 64);
        assert_eq!(grants.limits.timeout_s, 600);
        assert_eq!(grants.config["mode"], "fast");
        assert!(Grants::from_toml("[http]\nalow = []\n").is_err());
        assert!(Grants::from_toml("[limits]\nmemory_mb = 0\n").is_err());
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let grants = Grants::default();
        assert!(!grants.allows_host("localhost", 80));
        assert!(grants.fs.is_empty());
    }
}
