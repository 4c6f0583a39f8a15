//! Who is asking, and what they may do.
//!
//! A [`Principal`] is what authentication yields; every engine operation takes one, so no
//! route can reach a task without an authorisation decision. Permissions are
//! `<plugin>:<action>` (`*` for any plugin) plus `plugins:manage`, `users:manage`,
//! `runners:register` and `tasks:report`; roles grant defaults.

use serde::{Deserialize, Serialize};

use crate::model::Task;

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
}

impl Principal {
    /// The operator of a host that runs without authentication.
    pub fn local_admin() -> Self {
        Self {
            name: "admin".into(),
            role: Role::Admin,
            permissions: Vec::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    fn has(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// Whether the role or an explicit permission allows `action` on `plugin`'s tasks.
    pub fn may(&self, plugin: &str, action: TaskAction) -> bool {
        let by_role = match self.role {
            Role::Admin => true,
            Role::User => true,
            Role::Viewer => action == TaskAction::Read,
        };
        by_role
            || self.has(&format!("{plugin}:{}", action.as_str()))
            || self.has(&format!("*:{}", action.as_str()))
    }

    /// Whether this principal may see `task` (ownership; admins see all).
    pub fn may_read(&self, task: &Task) -> bool {
        (self.is_admin() || task.owner == self.name) && self.may(&task.plugin, TaskAction::Read)
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
}
