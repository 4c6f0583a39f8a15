//! Operator grants: what one plugin may touch (hosts, directories), its limits and its config.
//!
//! Grants are written as TOML beside a `.wasm` in the plugins directory or as JSON on upload;
//! both parse into [`Grants`]. Nothing is granted by default.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
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
    /// Who may create the plugin's tasks.
    #[serde(default, skip_serializing_if = "AccessGrant::is_default")]
    pub access: AccessGrant,
}

/// Who may create a plugin's tasks (see [`crate::policy`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessGrant {
    /// A restricted plugin's tasks are created only by admins, the `creators` below and keys
    /// naming `<plugin>:create`; `*:create` does not cover it. Unset: restricted exactly when
    /// the plugin is granted `runners` (its tasks run commands on runners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted: Option<bool>,
    /// Users who may create tasks of the plugin when it is restricted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creators: Vec<String>,
}

impl AccessGrant {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
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

    /// Whether the plugin's tasks need an explicit grant to create (see [`AccessGrant`]).
    pub fn is_restricted(&self) -> bool {
        self.access
            .restricted
            .unwrap_or_else(|| self.runners.as_ref().is_some_and(|r| r.allow))
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

    /// Whether the plugin may connect to the address `ip:port` (after its host name passed
    /// [`allows_host`](Self::allows_host)): an internal address only when the operator lists
    /// that address itself (`127.0.0.1:8080`, `[::1]`), never through `*` or a name.
    pub fn allows_address(&self, ip: IpAddr, port: u16) -> bool {
        !is_internal_address(ip)
            || self
                .http
                .allow
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .any(|p| p.names_address(ip, port))
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

/// Whether `ip` is one an outside name should never lead to: loopback, private, link-local
/// (cloud metadata at 169.254.169.254), shared, unspecified, multicast or reserved, and the
/// IPv6 forms of all of them (IPv4-mapped and NAT64 addresses included).
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_address(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if segments[0] == 0x64 && segments[1] == 0xff9b {
                let [.., c, d] = segments;
                let embedded = Ipv4Addr::new((c >> 8) as u8, c as u8, (d >> 8) as u8, d as u8);
                return is_internal_address(IpAddr::V4(embedded));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
        }
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

    /// Whether this entry names `ip` itself (an IP literal), with a matching port.
    fn names_address(&self, ip: IpAddr, port: u16) -> bool {
        matches!(&self.host, HostMatch::Exact(exact) if exact.parse::<IpAddr>() == Ok(ip))
            && self.port.is_none_or(|p| p == port)
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
    fn internal_addresses_need_the_operator_to_list_them_by_address() {
        let mut grants = Grants::default();
        grants.http.allow = vec!["*".into(), "127.0.0.1:8080".into()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(grants.allows_address(ip("93.184.216.34"), 443));
        assert!(grants.allows_address(ip("127.0.0.1"), 8080));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!grants.allows_address(ip(internal), 80), "{internal}");
        }
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
