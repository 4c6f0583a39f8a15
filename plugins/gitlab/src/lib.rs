//! The bundled `gitlab` plugin: the GitLab crawler's 17 task types against the GitLab v4 REST
//! API, input as the crawler seed:
//!
//! ```json
//! {"api_endpoint": "https://gitlab.example.com/api/v4",
//!  "credentials": {"access_token": "glpat-…", "token_type": "private_token"},
//!  "options": {"resource_id": 42, "resource_type": "project", "pagination": {"page_size": 100},
//!              "updated_after": "2025-01-01T00:00:00Z"}}
//! ```
//!
//! `access_token` and `refresh_token` are secrets (`writeOnly`): the host seals them and masks
//! them everywhere. The token travels as `PRIVATE-TOKEN`, or as `Authorization: Bearer` when
//! `token_type` is `oauth`. Every entity fetched is a record (collection = entity kind, key =
//! GitLab id, or name for branches and tags); the result counts them per collection.
//! `DISCOVER_AREAS` walks groups and projects and spawns follow-up tasks for each
//! (`options.spawn`, default `FETCH_PROJECT_DETAILS` per project and `FETCH_GROUP_DETAILS`
//! per group). The operator must allow the GitLab host (`http.allow`).

mod client;

use std::collections::BTreeMap;

use taskhost_plugin_sdk::tasks::{self, SpawnRequest};
use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, export_plugin, json, log,
    records,
};

use client::Client;

struct Gitlab;

/// Whom a task type reads about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    Project,
    Group,
    Instance,
}

/// Filters GitLab takes on issue and merge request listings.
const ISSUE_FILTERS: &[&str] = &[
    "updated_after",
    "updated_before",
    "created_after",
    "created_before",
    "state",
];

/// (name, description, scopes it accepts, incremental options it accepts).
const TYPES: &[(&str, &str, &[Scope], &[&str])] = &[
    (
        "DISCOVER_AREAS",
        "Walks groups and projects and spawns follow-up tasks for each",
        &[Scope::Group, Scope::Instance],
        &[],
    ),
    (
        "FETCH_PROJECTS",
        "Projects of a group (with subgroups) or of the instance",
        &[Scope::Group, Scope::Instance],
        &["updated_after", "updated_before"],
    ),
    (
        "FETCH_GROUPS",
        "Descendant groups of a group, or all groups of the instance",
        &[Scope::Group, Scope::Instance],
        &[],
    ),
    (
        "FETCH_PROJECT_DETAILS",
        "One project with its statistics",
        &[Scope::Project],
        &[],
    ),
    ("FETCH_GROUP_DETAILS", "One group", &[Scope::Group], &[]),
    (
        "FETCH_PROJECT_MEMBERS",
        "Members of a project, inherited ones included",
        &[Scope::Project],
        &[],
    ),
    (
        "FETCH_GROUP_MEMBERS",
        "Members of a group, inherited ones included",
        &[Scope::Group],
        &[],
    ),
    (
        "FETCH_ISSUES",
        "Issues of a project, a group or the instance",
        &[Scope::Project, Scope::Group, Scope::Instance],
        ISSUE_FILTERS,
    ),
    (
        "FETCH_MERGE_REQUESTS",
        "Merge requests of a project, a group or the instance",
        &[Scope::Project, Scope::Group, Scope::Instance],
        ISSUE_FILTERS,
    ),
    (
        "FETCH_COMMITS",
        "Commits of a project's repository",
        &[Scope::Project],
        &["since", "until", "ref_name"],
    ),
    (
        "FETCH_BRANCHES",
        "Branches of a project's repository",
        &[Scope::Project],
        &[],
    ),
    (
        "FETCH_TAGS",
        "Tags of a project's repository",
        &[Scope::Project],
        &[],
    ),
    (
        "FETCH_PIPELINES",
        "Pipelines of a project",
        &[Scope::Project],
        &["updated_after", "updated_before", "ref", "status"],
    ),
    (
        "FETCH_JOBS",
        "Jobs of a project, or of one pipeline (options.pipeline_id)",
        &[Scope::Project],
        &["scope", "pipeline_id"],
    ),
    (
        "FETCH_DEPLOYMENTS",
        "Deployments of a project",
        &[Scope::Project],
        &["updated_after", "updated_before", "environment", "status"],
    ),
    (
        "FETCH_ENVIRONMENTS",
        "Environments of a project",
        &[Scope::Project],
        &[],
    ),
    (
        "FETCH_VULNERABILITIES",
        "Vulnerabilities of a project (GitLab Ultimate)",
        &[Scope::Project],
        &[],
    ),
];

const INCREMENTAL: &[&str] = &[
    "updated_after",
    "updated_before",
    "created_after",
    "created_before",
    "state",
    "since",
    "until",
    "ref_name",
    "ref",
    "status",
    "scope",
    "environment",
    "pipeline_id",
];

fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|t| t.0).collect()
}

fn input_schema() -> Value {
    let mut options = serde_json::Map::new();
    options.insert(
        "resource_id".into(),
        json!({"type": ["integer", "string"], "minLength": 1, "maxLength": 1024}),
    );
    options.insert(
        "resource_type".into(),
        json!({"enum": ["project", "group", "instance"]}),
    );
    options.insert(
        "pagination".into(),
        json!({
            "type": "object",
            "properties": {
                "page_size": {"type": "integer", "minimum": 1, "maximum": 100},
                "max_pages": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": false,
        }),
    );
    for name in INCREMENTAL {
        let schema = if *name == "pipeline_id" {
            json!({"type": "integer", "minimum": 1})
        } else {
            json!({"type": "string", "minLength": 1, "maxLength": 256})
        };
        options.insert((*name).into(), schema);
    }
    let types = type_names();
    options.insert(
        "spawn".into(),
        json!({
            "type": "object",
            "properties": {
                "project": {"type": "array", "items": {"enum": types}},
                "group": {"type": "array", "items": {"enum": types}},
            },
            "additionalProperties": false,
        }),
    );
    options.insert(
        "max_children".into(),
        json!({"type": "integer", "minimum": 0, "maximum": 10000}),
    );
    json!({
        "type": "object",
        "properties": {
            "api_endpoint": {"type": "string", "minLength": 1, "maxLength": 2048},
            "credentials": {
                "type": "object",
                "properties": {
                    "access_token": {"type": "string", "minLength": 1, "maxLength": 4096, "writeOnly": true},
                    "refresh_token": {"type": "string", "minLength": 1, "maxLength": 4096, "writeOnly": true},
                    "token_type": {"enum": ["private_token", "oauth"]},
                },
                "required": ["access_token"],
                "additionalProperties": false,
            },
            "options": {"type": "object", "properties": options, "additionalProperties": false},
        },
        "required": ["api_endpoint", "credentials"],
        "additionalProperties": false,
    })
}

/// A checked input.
struct Job {
    task_type: &'static str,
    scope: Scope,
    resource_id: String,
    options: serde_json::Map<String, Value>,
}

fn parse(task_type: &str, input: &Value) -> Result<Job, TaskError> {
    let (name, _, scopes, allowed) = TYPES
        .iter()
        .find(|t| t.0 == task_type)
        .ok_or_else(|| TaskError::invalid_input(format!("unknown task type {task_type}")))?;
    client::api_root(input["api_endpoint"].as_str().unwrap_or_default())
        .map_err(TaskError::invalid_input)?;
    let options = input
        .get("options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let scope = match options.get("resource_type").and_then(Value::as_str) {
        Some("project") => Scope::Project,
        Some("group") => Scope::Group,
        Some(_) => Scope::Instance,
        // Without a type: the only one the task type takes, or a project when there is an id.
        None if scopes.len() == 1 => scopes[0],
        None if options.contains_key("resource_id") && scopes.contains(&Scope::Project) => {
            Scope::Project
        }
        None if options.contains_key("resource_id") => Scope::Group,
        None => Scope::Instance,
    };
    if !scopes.contains(&scope) {
        return Err(TaskError::invalid_input(format!(
            "{name} does not take resource_type {}; it takes {}",
            scope_name(scope),
            scopes
                .iter()
                .map(|s| scope_name(*s))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    let resource_id = match options.get("resource_id") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim_matches('/').to_owned(),
        _ => String::new(),
    };
    if scope != Scope::Instance && resource_id.is_empty() {
        return Err(TaskError::invalid_input(format!(
            "{name} on a {} needs options.resource_id (a numeric id or a full path)",
            scope_name(scope)
        )));
    }
    if resource_id
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        && !resource_id.is_empty()
    {
        return Err(TaskError::invalid_input(
            "options.resource_id is not a valid id or path",
        ));
    }
    for key in options.keys() {
        if INCREMENTAL.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            return Err(TaskError::invalid_input(format!(
                "{name} does not support options.{key}"
            )));
        }
    }
    if (options.contains_key("spawn") || options.contains_key("max_children"))
        && *name != "DISCOVER_AREAS"
    {
        return Err(TaskError::invalid_input(
            "options.spawn and max_children are for DISCOVER_AREAS",
        ));
    }
    Ok(Job {
        task_type: name,
        scope,
        resource_id,
        options,
    })
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Project => "project",
        Scope::Group => "group",
        Scope::Instance => "instance",
    }
}

/// What one listing fetches: URL path segments, query, collection and key field.
struct Listing {
    segments: Vec<String>,
    query: Vec<(String, String)>,
    collection: &'static str,
    key: &'static str,
    step: &'static str,
}

fn listing(job: &Job) -> Option<Listing> {
    let id = job.resource_id.clone();
    let scoped = |what: &str| -> Vec<String> {
        match job.scope {
            Scope::Project => vec!["projects".into(), id.clone(), what.into()],
            Scope::Group => vec!["groups".into(), id.clone(), what.into()],
            Scope::Instance => vec![what.into()],
        }
    };
    let project = |rest: &[&str]| -> Vec<String> {
        let mut segments = vec!["projects".to_owned(), id.clone()];
        segments.extend(rest.iter().map(|s| (*s).to_owned()));
        segments
    };
    let mut query = Vec::new();
    let (segments, collection, key, step) = match job.task_type {
        "FETCH_PROJECTS" => {
            if job.scope == Scope::Group {
                query.push(("include_subgroups".into(), "true".into()));
                (
                    vec!["groups".into(), id.clone(), "projects".into()],
                    "projects",
                    "id",
                    "Fetching projects",
                )
            } else {
                // GitLab asks for keyset pagination on the instance-wide project list.
                query.extend([
                    ("pagination".into(), "keyset".into()),
                    ("order_by".into(), "id".into()),
                    ("sort".into(), "asc".into()),
                ]);
                (
                    vec!["projects".into()],
                    "projects",
                    "id",
                    "Fetching projects",
                )
            }
        }
        "FETCH_GROUPS" => {
            if job.scope == Scope::Group {
                (
                    vec!["groups".into(), id.clone(), "descendant_groups".into()],
                    "groups",
                    "id",
                    "Fetching groups",
                )
            } else {
                query.push(("all_available".into(), "true".into()));
                (vec!["groups".into()], "groups", "id", "Fetching groups")
            }
        }
        "FETCH_PROJECT_MEMBERS" => (
            project(&["members", "all"]),
            "members",
            "id",
            "Fetching project members",
        ),
        "FETCH_GROUP_MEMBERS" => (
            vec!["groups".into(), id.clone(), "members".into(), "all".into()],
            "members",
            "id",
            "Fetching group members",
        ),
        "FETCH_ISSUES" => {
            if job.scope == Scope::Instance {
                query.push(("scope".into(), "all".into()));
            }
            (scoped("issues"), "issues", "id", "Fetching issues")
        }
        "FETCH_MERGE_REQUESTS" => {
            if job.scope == Scope::Instance {
                query.push(("scope".into(), "all".into()));
            }
            (
                scoped("merge_requests"),
                "merge_requests",
                "id",
                "Fetching merge requests",
            )
        }
        "FETCH_COMMITS" => (
            project(&["repository", "commits"]),
            "commits",
            "id",
            "Fetching commits",
        ),
        "FETCH_BRANCHES" => (
            project(&["repository", "branches"]),
            "branches",
            "name",
            "Fetching branches",
        ),
        "FETCH_TAGS" => (
            project(&["repository", "tags"]),
            "tags",
            "name",
            "Fetching tags",
        ),
        "FETCH_PIPELINES" => (
            project(&["pipelines"]),
            "pipelines",
            "id",
            "Fetching pipelines",
        ),
        "FETCH_JOBS" => match job.options.get("pipeline_id").and_then(Value::as_u64) {
            Some(pipeline) => (
                project(&["pipelines", &pipeline.to_string(), "jobs"]),
                "jobs",
                "id",
                "Fetching jobs",
            ),
            None => (project(&["jobs"]), "jobs", "id", "Fetching jobs"),
        },
        "FETCH_DEPLOYMENTS" => {
            // GitLab only filters deployments by update time when ordered by it.
            if job.options.contains_key("updated_after")
                || job.options.contains_key("updated_before")
            {
                query.push(("order_by".into(), "updated_at".into()));
            }
            (
                project(&["deployments"]),
                "deployments",
                "id",
                "Fetching deployments",
            )
        }
        "FETCH_ENVIRONMENTS" => (
            project(&["environments"]),
            "environments",
            "id",
            "Fetching environments",
        ),
        "FETCH_VULNERABILITIES" => (
            project(&["vulnerabilities"]),
            "vulnerabilities",
            "id",
            "Fetching vulnerabilities",
        ),
        _ => return None,
    };
    for (name, value) in &job.options {
        if INCREMENTAL.contains(&name.as_str())
            && name != "pipeline_id"
            && let Some(text) = value.as_str()
        {
            query.push((name.clone(), text.to_owned()));
        }
    }
    Some(Listing {
        segments,
        query,
        collection,
        key,
        step,
    })
}

fn record_key(item: &Value, field: &str) -> Option<String> {
    match item.get(field)? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.chars().take(256).collect()),
        _ => None,
    }
}

/// Fetches every page of a listing, emitting each item as a record.
fn crawl(
    client: &mut Client,
    listing: &Listing,
    counts: &mut BTreeMap<String, u64>,
    seen: &mut Vec<Value>,
) -> Result<Option<u64>, TaskError> {
    let mut query = listing.query.clone();
    query.push(("per_page".into(), client.page_size.to_string()));
    if !query.iter().any(|(k, _)| k == "pagination") {
        query.push(("page".into(), "1".into()));
    }
    let segments: Vec<&str> = listing.segments.iter().map(String::as_str).collect();
    let url = client.endpoint(&segments, &query);
    let mut reported_total = None;
    let mut processed = *counts.get(listing.collection).unwrap_or(&0);
    client.paginate(url, |_, page| {
        reported_total = page.total.or(reported_total);
        for item in &page.items {
            let Some(key) = record_key(item, listing.key) else {
                log::warn(&format!(
                    "a {} item without {}; skipped",
                    listing.collection, listing.key
                ));
                continue;
            };
            records::emit(listing.collection, &key, item).map_err(TaskError::from)?;
            processed += 1;
        }
        seen.extend(page.items);
        let mut progress = Progress::new().step(listing.step).processed(processed);
        if let Some(total) = reported_total {
            progress = progress.total(total);
        }
        let pages = page
            .total_pages
            .map(|t| format!(" of {t}"))
            .unwrap_or_default();
        progress
            .message(&format!("page {}{pages}", page.page))
            .report();
        Ok(())
    })?;
    counts.insert(listing.collection.to_owned(), processed);
    Ok(reported_total)
}

fn client_for(input: &Value) -> Result<Client, TaskError> {
    let base = client::api_root(input["api_endpoint"].as_str().unwrap_or_default())
        .map_err(TaskError::invalid_input)?;
    let credentials = &input["credentials"];
    let token = credentials["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TaskError::invalid_input("credentials.access_token is required"))?;
    let oauth = credentials["token_type"].as_str() == Some("oauth");
    let pagination = &input["options"]["pagination"];
    let page_size = pagination["page_size"]
        .as_u64()
        .unwrap_or(100)
        .clamp(1, 100) as u32;
    Ok(Client::new(
        base,
        token,
        oauth,
        page_size,
        pagination["max_pages"].as_u64(),
    ))
}

impl Plugin for Gitlab {
    fn describe() -> PluginInfo {
        TYPES.iter().fold(
            PluginInfo::new(
                "gitlab",
                env!("CARGO_PKG_VERSION"),
                "Crawls the GitLab REST API (v4)",
            ),
            |info, (name, description, _, _)| {
                info.task_type(TaskType::new(name, description, input_schema()))
            },
        )
    }

    fn validate(
        task_type: &str,
        input: &Value,
        _config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        parse(task_type, input).map(|_| ())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        let job = parse(&ctx.task_type, &ctx.input)?;
        let mut client = client_for(&ctx.input)?;
        let mut counts = BTreeMap::new();
        let mut extra = serde_json::Map::new();
        let mut total = None;
        match job.task_type {
            "FETCH_PROJECT_DETAILS" | "FETCH_GROUP_DETAILS" => {
                let (kind, collection, query) = if job.task_type == "FETCH_PROJECT_DETAILS" {
                    (
                        "projects",
                        "projects",
                        vec![("statistics".to_owned(), "true".to_owned())],
                    )
                } else {
                    (
                        "groups",
                        "groups",
                        vec![("with_projects".to_owned(), "false".to_owned())],
                    )
                };
                Progress::new()
                    .step(&format!("Fetching {}", &collection[..collection.len() - 1]))
                    .report();
                let url = client.endpoint(&[kind, &job.resource_id], &query);
                let item = client.get_json(&url)?;
                let key = record_key(&item, "id").unwrap_or_else(|| job.resource_id.clone());
                records::emit(collection, &key, &item)?;
                counts.insert(collection.to_owned(), 1u64);
                Progress::new().processed(1).total(1).report();
            }
            "DISCOVER_AREAS" => {
                discover(&mut client, &job, &ctx.input, &mut counts, &mut extra)?;
            }
            _ => {
                let listing = listing(&job)
                    .ok_or_else(|| TaskError::invalid_input("unsupported task type"))?;
                total = crawl(&mut client, &listing, &mut counts, &mut Vec::new())?;
            }
        }
        let mut result = json!({
            "task_type": job.task_type,
            "resource": {"type": scope_name(job.scope), "id": job.resource_id},
            "counts": counts,
            "total_reported": total,
            "requests": client.stats.requests,
            "pages": client.stats.pages,
            "retries": client.stats.retries,
            "rate_limit_waits": client.stats.rate_limit_waits,
        });
        if let Some(object) = result.as_object_mut() {
            object.extend(extra);
        }
        Ok(result)
    }
}

/// Groups and projects under the resource, then one child task per configured type for each.
fn discover(
    client: &mut Client,
    job: &Job,
    input: &Value,
    counts: &mut BTreeMap<String, u64>,
    extra: &mut serde_json::Map<String, Value>,
) -> Result<(), TaskError> {
    let sub = |task_type: &'static str, scope: Scope| Job {
        task_type,
        scope,
        resource_id: job.resource_id.clone(),
        options: serde_json::Map::new(),
    };
    let mut groups = Vec::new();
    if job.scope == Scope::Group {
        Progress::new().step("Fetching group").report();
        let url = client.endpoint(
            &["groups", &job.resource_id],
            &[("with_projects".into(), "false".into())],
        );
        let root = client.get_json(&url)?;
        if let Some(key) = record_key(&root, "id") {
            records::emit("groups", &key, &root)?;
        }
        groups.push(root);
        counts.insert("groups".into(), 1);
    }
    let group_listing = listing(&sub("FETCH_GROUPS", job.scope))
        .ok_or_else(|| TaskError::invalid_input("groups"))?;
    crawl(client, &group_listing, counts, &mut groups)?;
    let mut projects = Vec::new();
    let project_listing = listing(&sub("FETCH_PROJECTS", job.scope))
        .ok_or_else(|| TaskError::invalid_input("projects"))?;
    crawl(client, &project_listing, counts, &mut projects)?;

    let spawn = &job.options.get("spawn").cloned().unwrap_or(Value::Null);
    let types_for = |kind: &str, default: &str| -> Vec<String> {
        match spawn.get(kind).and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => vec![default.to_owned()],
        }
    };
    let plan: Vec<(String, &str, String)> = projects
        .iter()
        .filter_map(|p| record_key(p, "id"))
        .flat_map(|id| {
            types_for("project", "FETCH_PROJECT_DETAILS")
                .into_iter()
                .map(move |t| (t, "project", id.clone()))
        })
        .chain(
            groups
                .iter()
                .filter_map(|g| record_key(g, "id"))
                .flat_map(|id| {
                    types_for("group", "FETCH_GROUP_DETAILS")
                        .into_iter()
                        .map(move |t| (t, "group", id.clone()))
                }),
        )
        .collect();
    let max_children = job
        .options
        .get("max_children")
        .and_then(Value::as_u64)
        .unwrap_or(1000) as usize;
    let mut spawned = Vec::new();
    let pagination = input["options"]
        .get("pagination")
        .cloned()
        .unwrap_or(json!({}));
    for (index, (task_type, resource_type, id)) in plan.iter().enumerate() {
        if index >= max_children {
            break;
        }
        Progress::new()
            .step("Spawning follow-up tasks")
            .processed(index as u64)
            .total(plan.len().min(max_children) as u64)
            .report();
        // Numeric ids stay numbers, as GitLab returned them.
        let resource_id = id
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(id.as_str()));
        let child_input = json!({
            "api_endpoint": input["api_endpoint"],
            "credentials": input["credentials"],
            "options": {
                "resource_type": resource_type,
                "resource_id": resource_id,
                "pagination": pagination,
            },
        });
        let id = tasks::spawn(&SpawnRequest {
            plugin: None,
            task_type: task_type.clone(),
            input: child_input.to_string(),
            labels: vec![("gitlab.parent_type".into(), "DISCOVER_AREAS".into())],
            priority: None,
        })?;
        spawned.push(id);
    }
    if plan.len() > max_children {
        log::warn(&format!(
            "{} follow-up tasks not spawned (options.max_children = {max_children})",
            plan.len() - max_children
        ));
    }
    extra.insert(
        "children".into(),
        json!({
            "spawned": spawned.len(),
            "skipped": plan.len().saturating_sub(max_children),
            "ids": spawned.iter().take(100).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

export_plugin!(Gitlab);
