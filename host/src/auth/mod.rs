//! Who is asking, and what they may do.
//!
//! A [`Principal`] is what authentication yields; every engine operation takes one, and
//! [`crate::policy`] decides what it may do. Permissions are `<plugin>:<action>` (`*` for any
//! plugin) plus `plugins:manage`, `users:manage`, `runners:register` and `tasks:report`;
//! roles grant defaults.

mod imported_keys;
mod secrets;
mod service;

use serde::{Deserialize, Serialize};

pub use imported_keys::{ImportedKey, ImportedKeys};
pub use secrets::{
    MASK, SecretBox, SecretError, redact, redact_value, seal_secrets, secret_paths, secret_strings,
    unseal_into,
};
pub use service::{ApiKeyRequest, Auth, AuthConfig, AuthError, LoginResult, api_key_json};
pub(crate) use service::{principal_for_key, random_token, sha256_hex, valid_username};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
    Viewer,
}

impl Role {
    /// Whether this role grants at least what `other` does.
    pub fn covers(self, other: Role) -> bool {
        let rank = |r: Role| match r {
            Role::Viewer => 0,
            Role::User => 1,
            Role::Admin => 2,
        };
        rank(self) >= rank(other)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// An API key's explicit permissions: with `restricted`, the only rights it has (within
    /// what its owner's role grants).
    pub permissions: Vec<String>,
    /// Only `permissions` count, not the role's defaults (API keys made with permissions).
    pub restricted: bool,
    /// The API key this principal authenticated with, if any (child tasks act through it).
    pub key_id: Option<String>,
    /// The only labels a runner registered with this key may carry (`None`: any).
    pub runner_labels: Option<Vec<String>>,
}

impl Principal {
    /// The operator of a host that runs without authentication.
    pub fn local_admin() -> Self {
        Self {
            name: "admin".into(),
            role: Role::Admin,
            permissions: Vec::new(),
            restricted: false,
            key_id: None,
            runner_labels: None,
        }
    }

    /// A principal with a role's defaults.
    pub fn with_role(name: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            role,
            permissions: Vec::new(),
            restricted: false,
            key_id: None,
            runner_labels: None,
        }
    }
}
