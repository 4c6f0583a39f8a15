//! Every authorization decision of the host: which [`Principal`] may do what to which task,
//! plugin, queue, runner, user or key. The engine, the stream hub, the runner registry and the
//! auth service ask here; HTTP handlers never decide.
//!
//! Rights come from a role, and an API key made with explicit permissions narrows them: such a
//! key is allowed an action only when its permissions name it **and** its owner's current role
//! grants it, so a demoted owner's keys shrink with it. Roles grant:
//!
//! | right | admin | user | viewer |
//! | --- | --- | --- | --- |
//! | read own tasks (admins: all) | yes | yes | yes |
//! | create / cancel own tasks of an open plugin | yes | yes | no |
//! | create tasks of a restricted plugin | yes | if the operator lists the user | no |
//! | report on a task it owns or is named a reporter of (`tasks:report`) | yes | yes | no |
//! | `plugins:manage`, `users:manage`, `runners:register` | yes | no | no |
//!
//! A **restricted** plugin (by default, every plugin granted `runners`: its tasks run commands
//! on runners) is not covered by `*:create`; only admins, the users its grants list in
//! `access.creators`, and keys naming `<plugin>:create` explicitly may create its tasks.

use crate::auth::{Principal, Role};
use crate::model::{Event, Task};
use crate::runtime::Grants;

/// What can be done to a plugin's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAction {
    Create,
    Read,
    Cancel,
}

impl TaskAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskAction::Create => "create",
            TaskAction::Read => "read",
            TaskAction::Cancel => "cancel",
        }
    }
}

/// The host-wide permissions a key may name besides `<plugin>:<action>`.
pub const PLUGINS_MANAGE: &str = "plugins:manage";
pub const USERS_MANAGE: &str = "users:manage";
pub const RUNNERS_REGISTER: &str = "runners:register";
pub const TASKS_REPORT: &str = "tasks:report";

const HOST_PERMISSIONS: [&str; 4] = [PLUGINS_MANAGE, USERS_MANAGE, RUNNERS_REGISTER, TASKS_REPORT];

/// Who may create a plugin's tasks, from its grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginAccess {
    pub restricted: bool,
    /// Users (besides admins) who may create its tasks when it is restricted.
    pub creators: Vec<String>,
}

impl PluginAccess {
    /// A plugin anyone with the right role may use (external tasks, unknown plugins).
    pub fn open() -> Self {
        Self::default()
    }

    pub fn of(grants: &Grants) -> Self {
        Self {
            restricted: grants.is_restricted(),
            creators: grants.access.creators.clone(),
        }
    }
}

/// A parsed permission string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Permission<'a> {
    /// `<plugin>:<action>`; `None` for `*`.
    Task(Option<&'a str>, TaskAction),
    Host(&'a str),
}

fn parse(permission: &str) -> Option<Permission<'_>> {
    if let Some(host) = HOST_PERMISSIONS.iter().find(|p| **p == permission) {
        return Some(Permission::Host(host));
    }
    let (plugin, action) = permission.split_once(':')?;
    let action = match action {
        "create" => TaskAction::Create,
        "read" => TaskAction::Read,
        "cancel" => TaskAction::Cancel,
        _ => return None,
    };
    if plugin.is_empty() || plugin.len() > 128 || plugin.chars().any(char::is_control) {
        return None;
    }
    Some(Permission::Task((plugin != "*").then_some(plugin), action))
}

/// Whether `permission` is one the host knows.
pub fn is_known_permission(permission: &str) -> bool {
    parse(permission).is_some()
}

/// What a role grants a user named `name`, before any key narrows it.
fn role_grants(role: Role, name: &str, permission: &Permission<'_>, access: &PluginAccess) -> bool {
    match (role, permission) {
        (Role::Admin, _) => true,
        (Role::User, Permission::Task(_, TaskAction::Read | TaskAction::Cancel)) => true,
        // `*:create` is a user's for open plugins only; a restricted one needs the operator.
        (Role::User, Permission::Task(None, TaskAction::Create)) => true,
        (Role::User, Permission::Task(Some(_), TaskAction::Create)) => {
            !access.restricted || access.creators.iter().any(|c| c == name)
        }
        (Role::User, Permission::Host(p)) => *p == TASKS_REPORT,
        (Role::Viewer, Permission::Task(_, TaskAction::Read)) => true,
        (Role::Viewer, _) => false,
    }
}

/// Whether a restricted key's own permission list names `permission`.
fn key_names(principal: &Principal, permission: &Permission<'_>, access: &PluginAccess) -> bool {
    principal
        .permissions
        .iter()
        .filter_map(|p| parse(p))
        .any(|held| match (&held, permission) {
            (Permission::Host(a), Permission::Host(b)) => a == b,
            (Permission::Task(None, a), Permission::Task(_, b)) => {
                // `*:create` does not reach a restricted plugin: it must be named.
                a == b && !(*b == TaskAction::Create && access.restricted)
            }
            (Permission::Task(Some(p), a), Permission::Task(Some(q), b)) => p == q && a == b,
            _ => false,
        })
}

fn allows(principal: &Principal, permission: &Permission<'_>, access: &PluginAccess) -> bool {
    role_grants(principal.role, &principal.name, permission, access)
        && (!principal.restricted || key_names(principal, permission, access))
}

fn allows_host(principal: &Principal, permission: &'static str) -> bool {
    allows(
        principal,
        &Permission::Host(permission),
        &PluginAccess::open(),
    )
}

/// Whether the principal holds everything there is (an admin's login or unrestricted key).
pub fn is_admin(principal: &Principal) -> bool {
    principal.role == Role::Admin && !principal.restricted
}

/// Whether `principal` may put `permission` on a new key: only rights it holds now.
pub fn may_grant(principal: &Principal, permission: &str, access: &PluginAccess) -> bool {
    parse(permission).is_some_and(|p| allows(principal, &p, access))
}

/// Whether the principal may create tasks of `plugin`.
pub fn may_create(principal: &Principal, plugin: &str, access: &PluginAccess) -> bool {
    allows(
        principal,
        &Permission::Task(Some(plugin), TaskAction::Create),
        access,
    )
}

/// Whether the principal's rights reach `plugin`'s tasks for `action` (read or cancel).
pub fn may_act_on(principal: &Principal, plugin: &str, action: TaskAction) -> bool {
    allows(
        principal,
        &Permission::Task(Some(plugin), action),
        &PluginAccess::open(),
    )
}

fn owns_or_admin(principal: &Principal, owner: &str) -> bool {
    is_admin(principal) || owner == principal.name
}

/// Whether the principal may see `task` (its owner; admins see all).
pub fn may_read(principal: &Principal, task: &Task) -> bool {
    owns_or_admin(principal, &task.owner) && may_act_on(principal, &task.plugin, TaskAction::Read)
}

/// Whether the principal may see an event (it carries its task's owner and plugin, so streams
/// decide without loading the task).
pub fn may_read_event(principal: &Principal, event: &Event) -> bool {
    owns_or_admin(principal, &event.owner) && may_act_on(principal, &event.plugin, TaskAction::Read)
}

/// Whether the principal may cancel, pause, resume, retry or message `task`.
pub fn may_control(principal: &Principal, task: &Task) -> bool {
    owns_or_admin(principal, &task.owner) && may_act_on(principal, &task.plugin, TaskAction::Cancel)
}

/// Whether the principal may report on an external task: its owner, a reporter the owner
/// named for it, or an admin; a key also needs `tasks:report`.
pub fn may_report(principal: &Principal, task: &Task) -> bool {
    let named = owns_or_admin(principal, &task.owner)
        || task.reporters.iter().any(|r| r == &principal.name);
    named && allows_host(principal, TASKS_REPORT)
}

/// Whether the principal may read `task` or (as a named reporter) at least find it.
pub fn may_find(principal: &Principal, task: &Task) -> bool {
    may_read(principal, task) || may_report(principal, task)
}

/// What the principal gets back after reporting on `task`: the whole task when it may read it,
/// otherwise (a named reporter) only the state it reports on, never the owner's input.
pub fn task_view(principal: &Principal, task: &Task) -> serde_json::Value {
    if may_read(principal, task) {
        task.to_api()
    } else {
        task.to_reporter_api()
    }
}

/// Which tasks lists and statistics may count for the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadScope {
    /// `None`: every owner's.
    pub owner: Option<String>,
    /// `None`: every plugin's; otherwise only these (a key scoped to some plugins).
    pub plugins: Option<Vec<String>>,
}

/// The tasks the principal may list and count.
pub fn read_scope(principal: &Principal) -> ReadScope {
    let owner = (!is_admin(principal)).then(|| principal.name.clone());
    let everything = !principal.restricted
        || principal
            .permissions
            .iter()
            .any(|p| parse(p) == Some(Permission::Task(None, TaskAction::Read)));
    let plugins = (!everything).then(|| {
        principal
            .permissions
            .iter()
            .filter_map(|p| match parse(p) {
                Some(Permission::Task(Some(plugin), TaskAction::Read)) => Some(plugin.to_owned()),
                _ => None,
            })
            .collect()
    });
    ReadScope { owner, plugins }
}

pub fn may_manage_plugins(principal: &Principal) -> bool {
    allows_host(principal, PLUGINS_MANAGE)
}

/// Whether the principal may see a plugin's operator grants (paths, hosts, config).
pub fn may_see_grants(principal: &Principal) -> bool {
    may_manage_plugins(principal)
}

pub fn may_manage_users(principal: &Principal) -> bool {
    allows_host(principal, USERS_MANAGE)
}

/// Whether the principal may create a user with `role`: `users:manage`, and never a user with
/// more rights than its own (so `users:manage` alone is no way up).
pub fn may_create_user(principal: &Principal, role: Role) -> bool {
    may_manage_users(principal)
        && (is_admin(principal) || (role != Role::Admin && principal.role.covers(role)))
}

/// Whether the principal may make API keys at all (a key with explicit permissions may not
/// make more keys).
pub fn may_create_keys(principal: &Principal) -> bool {
    !principal.restricted
}

/// Whether the principal may see or revoke a key owned by `owner`.
pub fn may_manage_key(principal: &Principal, owner: &str) -> bool {
    owns_or_admin(principal, owner)
}

/// Whether the principal may register runners: an operator right.
pub fn may_register_runners(principal: &Principal) -> bool {
    allows_host(principal, RUNNERS_REGISTER)
}

/// The labels a registering principal may not give a runner (empty: all allowed). A key made
/// with `runner_labels` may claim only those; an admin's own login may claim any.
pub fn refused_runner_labels<'a>(principal: &Principal, labels: &'a [String]) -> Vec<&'a str> {
    match &principal.runner_labels {
        None => Vec::new(),
        Some(allowed) => labels
            .iter()
            .filter(|l| !allowed.iter().any(|a| a == *l))
            .map(String::as_str)
            .collect(),
    }
}

/// Whether the principal may see or remove a runner registered by `registrant`.
pub fn may_manage_runner(principal: &Principal, registrant: &str) -> bool {
    may_register_runners(principal) && owns_or_admin(principal, registrant)
}

/// Whether the principal may pause, resume or clear a queue.
pub fn may_manage_queues(principal: &Principal) -> bool {
    may_manage_plugins(principal)
}

/// Whether the principal may see host-wide figures (queue depths of every owner, metrics).
pub fn may_see_host_figures(principal: &Principal) -> bool {
    may_manage_plugins(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role, permissions: &[&str]) -> Principal {
        Principal {
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            restricted: true,
            ..Principal::with_role("alice", role)
        }
    }

    fn restricted() -> PluginAccess {
        PluginAccess {
            restricted: true,
            creators: vec!["bob".into()],
        }
    }

    #[test]
    fn a_viewer_holds_no_create_report_or_runner_right_to_grant() {
        let viewer = Principal::with_role("alice", Role::Viewer);
        for permission in ["*:create", "testkit:create", TASKS_REPORT, RUNNERS_REGISTER] {
            assert!(
                !may_grant(&viewer, permission, &PluginAccess::open()),
                "{permission}"
            );
        }
        assert!(may_grant(&viewer, "testkit:read", &PluginAccess::open()));
    }

    #[test]
    fn a_key_is_cut_down_to_its_owners_current_role() {
        let demoted = key(Role::Viewer, &["*:create", "testkit:cancel"]);
        assert!(!may_create(&demoted, "testkit", &PluginAccess::open()));
        assert!(!may_act_on(&demoted, "testkit", TaskAction::Cancel));
        let user = key(Role::User, &["*:create"]);
        assert!(may_create(&user, "testkit", &PluginAccess::open()));
    }

    #[test]
    fn wildcard_create_does_not_reach_a_restricted_plugin() {
        let admin_key = key(Role::Admin, &["*:create"]);
        assert!(!may_create(&admin_key, "build", &restricted()));
        let named = key(Role::Admin, &["build:create"]);
        assert!(may_create(&named, "build", &restricted()));
        let user = Principal::with_role("alice", Role::User);
        assert!(!may_create(&user, "build", &restricted()));
        let bob = Principal::with_role("bob", Role::User);
        assert!(may_create(&bob, "build", &restricted()));
        assert!(may_create(
            &Principal::with_role("root", Role::Admin),
            "build",
            &restricted()
        ));
    }

    #[test]
    fn a_plugin_scoped_key_lists_only_its_plugins() {
        let scope = read_scope(&key(Role::User, &["gitlab:read"]));
        assert_eq!(scope.plugins, Some(vec!["gitlab".to_owned()]));
        assert_eq!(scope.owner.as_deref(), Some("alice"));
        let everything = read_scope(&key(Role::User, &["*:read"]));
        assert_eq!(everything.plugins, None);
        let admin = read_scope(&Principal::with_role("root", Role::Admin));
        assert_eq!(
            admin,
            ReadScope {
                owner: None,
                plugins: None
            }
        );
    }

    #[test]
    fn runner_registration_is_an_operator_right_with_label_limits() {
        assert!(!may_register_runners(&Principal::with_role(
            "alice",
            Role::User
        )));
        assert!(!may_register_runners(&key(Role::User, &[RUNNERS_REGISTER])));
        let mut operator_key = key(Role::Admin, &[RUNNERS_REGISTER]);
        assert!(may_register_runners(&operator_key));
        operator_key.runner_labels = Some(vec!["linux".into()]);
        let labels = vec!["linux".to_owned(), "pool-ci".to_owned()];
        assert_eq!(
            refused_runner_labels(&operator_key, &labels),
            vec!["pool-ci"]
        );
    }
}
