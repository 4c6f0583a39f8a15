//! Who is asking, and what they may do.
//!
//! A [`Principal`] is what authentication yields; every engine operation takes one, so no
//! route can reach a task without an authorisation decision. Permissions are
//! `<plugin>:<action>` (`*` for any plugin) plus `plugins:manage`, `users:manage`,
//! `runners:register` and `tasks:report`; roles grant defaults.

mod secrets;
mod service;

use serde::{Deserialize, Serialize};

pub use secrets::{
    MASK, SecretBox, SecretError, redact, redact_value, seal_secrets, secret_paths, secret_strings,
    unseal_into,
};
pub use service::{ApiKeyRequest, Auth, AuthConfig, AuthError, LoginResult, api_key_json};
pub(crate) use service::{random_token, sha256_hex};

use crate::model::{Event, Task};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
    Viewer,
}

/// What can be done to a plugin's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    Create,
    Read,
    Cancel,
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

impl TaskAction {
    fn as_str(self) -> &'static str {
        match self {
            TaskAction::Create => "create",
            TaskAction::Read => "read",
            TaskAction::Cancel => "cancel",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Explicit permissions, on top of (or, for API keys, instead of) the role's.
    pub permissions: Vec<String>,
    /// Only `permissions` count, not the role's defaults (API keys made with permissions).
    pub restricted: bool,
}

impl Principal {
    /// The operator of a host that runs without authentication.
    pub fn local_admin() -> Self {
        Self {
            name: "admin".into(),
            role: Role::Admin,
            permissions: Vec::new(),
            restricted: false,
        }
    }

    /// A principal with a role's defaults.
    pub fn with_role(name: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            role,
            permissions: Vec::new(),
            restricted: false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && !self.restricted
    }

    fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// Whether the role or an explicit permission allows `action` on `plugin`'s tasks.
    pub fn may(&self, plugin: &str, action: TaskAction) -> bool {
        let by_role = !self.restricted
            && match self.role {
                Role::Admin | Role::User => true,
                Role::Viewer => action == TaskAction::Read,
            };
        by_role
            || self.has(&format!("{plugin}:{}", action.as_str()))
            || self.has(&format!("*:{}", action.as_str()))
    }

    /// Whether this principal may see `task` (ownership; admins see all).
    pub fn may_read(&self, task: &Task) -> bool {
        self.may_read_of(&task.owner, &task.plugin)
    }

    /// Whether this principal may see an event (it carries its task's owner and plugin, so
    /// streams decide without loading the task).
    pub fn may_read_event(&self, event: &Event) -> bool {
        self.may_read_of(&event.owner, &event.plugin)
    }

    fn may_read_of(&self, owner: &str, plugin: &str) -> bool {
        (self.is_admin() || owner == self.name) && self.may(plugin, TaskAction::Read)
    }

    /// Whether this principal may cancel, pause, resume or retry `task`.
    pub fn may_control(&self, task: &Task) -> bool {
        (self.is_admin() || task.owner == self.name) && self.may(&task.plugin, TaskAction::Cancel)
    }

    /// Whether this principal may report on an external task.
    pub fn may_report(&self, task: &Task) -> bool {
        self.is_admin() || task.owner == self.name || self.has("tasks:report")
    }

    pub fn may_manage_plugins(&self) -> bool {
        self.is_admin() || self.has("plugins:manage")
    }

    pub fn may_manage_runners(&self) -> bool {
        self.is_admin() || self.has("runners:register")
    }

    pub fn may_manage_users(&self) -> bool {
        self.is_admin() || self.has("users:manage")
    }

    /// Whether the caller can do more than read.
    pub fn is_viewer(&self) -> bool {
        self.role == Role::Viewer && !self.restricted
    }
}
