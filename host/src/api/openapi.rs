//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the API. Its schemas are
//! derived (utoipa) from the very types the handlers parse and answer with, so a field or a
//! constraint changed there changes the document; its operations come from [`ROUTES`], the one
//! table of every route (warp's filters cannot be enumerated; the tests walk the table to
//! reach every route, and fail on a route it lacks).

use std::sync::LazyLock;

use serde_json::Value;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, Required, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use super::PageMeta;
use super::auth_routes::{LoginBody, NewUserBody, RoleChange};
use super::error::ErrorBody;
use super::runners::Registration;
use super::tasks::{CreateTaskBody, EventPageMeta, LogPageMeta, MessageBody};
use crate::auth::ApiKeyRequest;
use crate::engine::{ErrorReport, ProgressReport, QueueInfo, TaskUpdate};
use crate::engine::{Project, Stats};
use crate::model::{EventKind, LogEntry, Record, Task};
use crate::runners::{CurrentJob, FleetSummary, RunnerList, RunnerState, RunnerView};
use crate::streams::StreamStats;

/// One route: method, path, summary, success status, request and response schema names.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub status: u16,
    pub request: Option<&'static str>,
    pub response: &'static str,
}

/// The methods [`ROUTES`] serves on `path` (template segments `{x}` match any segment), for
/// the `Allow` header of a 405.
pub fn allowed_methods(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut methods: Vec<String> = ROUTES
        .iter()
        .filter(|route| {
            let template: Vec<&str> = route.path.split('/').collect();
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        })
        .map(|route| route.method.to_ascii_uppercase())
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    status: u16,
    request: Option<&'static str>,
    response: &'static str,
) -> Route {
    Route {
        method,
        path,
        summary,
        status,
        request,
        response,
    }
}

pub const ROUTES: &[Route] = &[
    route(
        "post",
        "/api/v1/auth/login",
        "Log in with username and password; returns a bearer token (no credentials needed)",
        200,
        Some("Login"),
        "Token",
    ),
    route(
        "post",
        "/api/v1/auth/api-keys",
        "Create an API key (the key is shown once)",
        201,
        Some("ApiKeyRequest"),
        "ApiKey",
    ),
    route(
        "get",
        "/api/v1/auth/api-keys",
        "List API keys (an admin sees all)",
        200,
        None,
        "Object",
    ),
    route(
        "delete",
        "/api/v1/auth/api-keys/{id}",
        "Revoke an API key",
        200,
        None,
        "ApiKey",
    ),
    route(
        "patch",
        "/api/v1/users/{username}",
        "Change a user's role (users:manage); applies at once to its tokens and keys",
        200,
        Some("RoleChange"),
        "User",
    ),
    route(
        "post",
        "/api/v1/users",
        "Create a user (users:manage)",
        201,
        Some("NewUser"),
        "Object",
    ),
    route(
        "post",
        "/api/v1/tasks",
        "Create a task",
        202,
        Some("CreateTask"),
        "Task",
    ),
    route(
        "get",
        "/api/v1/tasks",
        "List tasks (filters: status, plugin, type, owner, label.<key>, created_after, created_before; sort, order, limit, offset)",
        200,
        None,
        "TaskPage",
    ),
    route("get", "/api/v1/tasks/{id}", "Get a task", 200, None, "Task"),
    route(
        "delete",
        "/api/v1/tasks/{id}",
        "Cancel a task",
        200,
        None,
        "Task",
    ),
    route(
        "put",
        "/api/v1/tasks/{id}",
        "Report status, result, error or progress of an external task",
        200,
        Some("TaskUpdate"),
        "Task",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/pause",
        "Pause a task",
        200,
        None,
        "Task",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/resume",
        "Resume a paused task",
        200,
        None,
        "Task",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/retry",
        "Retry a failed or cancelled task",
        200,
        None,
        "Task",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/progress",
        "Report progress of an external task",
        200,
        Some("ProgressReport"),
        "Task",
    ),
    route(
        "get",
        "/api/v1/tasks/{id}/progress",
        "Get a task's progress",
        200,
        None,
        "TaskProgressView",
    ),
    route(
        "get",
        "/api/v1/tasks/{id}/events",
        "A task's events after a seq (after_seq, limit)",
        200,
        None,
        "EventPage",
    ),
    route(
        "get",
        "/api/v1/tasks/{id}/logs",
        "A task's log lines (since, limit; lines=N: the last N; format=text: plain text; follow=true streams server-sent events, after the tail when lines is given)",
        200,
        None,
        "LogPage",
    ),
    route(
        "get",
        "/api/v1/tasks/{id}/records",
        "Records a task emitted (collection, limit, offset)",
        200,
        None,
        "RecordPage",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/errors",
        "Record a non-fatal error on an external task (error_type, message, stack_trace kept to its last 10 KB, metadata); read them with records?collection=errors",
        201,
        Some("ErrorRecordBody"),
        "Record",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/messages",
        "Send a message to a task's subscribers",
        202,
        Some("Message"),
        "Event",
    ),
    route(
        "get",
        "/api/v1/tasks/{id}/ws",
        "WebSocket stream of one task (upgrade; ?after_seq= resumes; ?token= or ?api_key= may carry the credential); opens with a connected frame holding the task",
        101,
        None,
        "StreamFrame",
    ),
    route(
        "get",
        "/api/v1/ws",
        "WebSocket stream (upgrade; ?token= or ?api_key= may carry the credential): subscribe to task:<id>, plugin:<name>, label:<key>=<value>, tasks, system; after_seq resumes",
        101,
        None,
        "StreamFrame",
    ),
    route(
        "get",
        "/api/v1/plugins",
        "List plugins",
        200,
        None,
        "PluginList",
    ),
    route(
        "post",
        "/api/v1/plugins",
        "Upload a plugin component (application/wasm; grants as JSON in ?grants= or multipart)",
        201,
        Some("Component"),
        "Plugin",
    ),
    route(
        "get",
        "/api/v1/plugins/{name}",
        "Get a plugin",
        200,
        None,
        "Plugin",
    ),
    route(
        "put",
        "/api/v1/plugins/{name}",
        "Replace a plugin (hot reload)",
        200,
        Some("Component"),
        "Plugin",
    ),
    route(
        "delete",
        "/api/v1/plugins/{name}",
        "Unload a plugin (force=true cancels its running tasks)",
        200,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners",
        "Register a runner (runners:register); the token is shown once",
        201,
        Some("RunnerRegistration"),
        "Object",
    ),
    route(
        "get",
        "/api/v1/runners",
        "List runners (status=online|offline|busy|idle, labels=a,b: carrying every one), with the summary of all one may see",
        200,
        None,
        "RunnerList",
    ),
    route(
        "get",
        "/api/v1/runners/{id}",
        "One runner: status, busy, current_job, profile and last reported resource_usage",
        200,
        None,
        "Runner",
    ),
    route(
        "delete",
        "/api/v1/runners/{id}",
        "Remove a runner",
        204,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/heartbeat",
        "Runner token: a sign of life with the jobs it runs (and resource_usage, numbers by name); answers jobs to stop",
        200,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/jobs/claim",
        "Runner token: lease the next matching job (wait_ms long-polls); 204 when none",
        200,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/jobs/{job}/logs",
        "Runner token: log lines for the job's task",
        204,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/jobs/{job}/progress",
        "Runner token: progress of the job's task",
        204,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/jobs/{job}/steps",
        "Runner token: a finished step",
        204,
        None,
        "Object",
    ),
    route(
        "post",
        "/api/v1/runners/{id}/jobs/{job}/finish",
        "Runner token: the job's outcome and artifacts ({status, artifacts: [{path, size_bytes, sha256}]})",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/queues",
        "Per-plugin queue counts",
        200,
        None,
        "QueueList",
    ),
    route(
        "post",
        "/api/v1/queues/{plugin}/pause",
        "Pause a plugin's queue",
        200,
        None,
        "Queue",
    ),
    route(
        "post",
        "/api/v1/queues/{plugin}/resume",
        "Resume a plugin's queue",
        200,
        None,
        "Queue",
    ),
    route(
        "delete",
        "/api/v1/queues/{plugin}/failed",
        "Delete a plugin's failed tasks",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/health",
        "Health; details=true adds storage, runtime and queues",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/stats",
        "Task statistics (label.<key>, created_after, created_before, group_by=label.<key>,…)",
        200,
        None,
        "Stats",
    ),
    route(
        "post",
        "/api/v1/tasks/{id}/secret-scan",
        "Scan the task's log for hard-coded secrets (a secret_scan task of the analysis plugin)",
        202,
        None,
        "Task",
    ),
    route(
        "get",
        "/api/v1/projects",
        "Projects: values of the project label with task counts (sort, order, limit, offset)",
        200,
        None,
        "ProjectList",
    ),
    route(
        "post",
        "/api/v1/github/webhook",
        "GitHub webhook receiver: workflow_job deliveries (X-Hub-Signature-256 verified) become delegated jobs (no other credential)",
        200,
        Some("Object"),
        "Object",
    ),
    route(
        "get",
        "/api/v1/github/repositories",
        "Repositories GitHub deliveries named, with their job counts (total, this month, running)",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/github/status",
        "The GitHub integration: enabled, webhook state, deliveries, repositories tracked",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/streams",
        "WebSocket connections: open, per project label and principal, frames sent and received",
        200,
        None,
        "StreamStats",
    ),
    route(
        "get",
        "/api/v1/openapi.json",
        "This document",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/health",
        "Liveness and version (no authentication)",
        200,
        None,
        "Object",
    ),
    route("get", "/health/live", "Liveness probe", 200, None, "Object"),
    route(
        "get",
        "/health/ready",
        "Readiness probe (503 until storage and plugins are loaded)",
        200,
        None,
        "Object",
    ),
    route("get", "/metrics", "Prometheus metrics", 200, None, "Text"),
];

// The envelopes `page()` and the list handlers build, with their items typed.
#[allow(dead_code)]
#[derive(ToSchema)]
struct TaskPage {
    data: Vec<Task>,
    meta: PageMeta,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct RecordPage {
    data: Vec<Record>,
    meta: PageMeta,
}

/// An event as the API shows it (the stored one also keeps who may read it).
#[allow(dead_code)]
#[derive(ToSchema)]
struct Event {
    seq: u64,
    task_id: String,
    #[schema(rename = "type")]
    kind: EventKind,
    /// The payload of that type of event.
    data: Value,
    /// RFC 3339, UTC, milliseconds.
    timestamp: String,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct EventPage {
    data: Vec<Event>,
    meta: EventPageMeta,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct LogPage {
    data: Vec<LogEntry>,
    meta: LogPageMeta,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct ProjectList {
    data: Vec<Project>,
    meta: PageMeta,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct QueueList {
    data: Vec<QueueInfo>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskhost",
        description = "Background tasks of many job families, each a sandboxed WebAssembly plugin, behind one API."
    ),
    components(schemas(
        Task, TaskPage, CreateTaskBody, TaskUpdate, ProgressReport, MessageBody, Event, EventPage,
        LogPage, RecordPage, QueueInfo, QueueList, Stats, LoginBody, NewUserBody, RoleChange,
        ApiKeyRequest, Registration, ErrorReport, Record, RunnerView, RunnerList, FleetSummary, CurrentJob,
        RunnerState, ErrorBody, ProjectList, StreamStats
    )),
    modifiers(&Operations),
    security(("bearer" = []), ("apiKey" = []))
)]
struct ApiDoc;

/// Schemas for answers the handlers still build as free JSON: described as what they are, an
/// object (or the binary and text bodies the plugin and metrics routes carry).
const FREE_FORM: &[(&str, Option<&str>)] = &[
    ("ApiKey", None),
    ("User", None),
    ("Plugin", None),
    ("PluginList", None),
    ("Object", None),
    ("Token", None),
    ("TaskProgressView", None),
    (
        "StreamFrame",
        Some(
            "Server frames: connected, task events (seq, task_id, type, data, timestamp), system, subscribed, unsubscribed, pong, error. Client frames: subscribe {topics, after_seq?}, unsubscribe {topics}, ping.",
        ),
    ),
];

struct Operations;

impl Modify for Operations {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        for (name, description) in FREE_FORM {
            let object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(*description)
                .build();
            components
                .schemas
                .insert((*name).to_owned(), Schema::Object(object).into());
        }
        components.schemas.insert(
            "Component".to_owned(),
            Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/wasm")
                    .build(),
            )
            .into(),
        );
        components.schemas.insert(
            "Text".to_owned(),
            Schema::Object(ObjectBuilder::new().schema_type(Type::String).build()).into(),
        );
        for route in ROUTES {
            openapi.paths.add_path_operation(
                route.path,
                vec![method(route.method)],
                operation(route),
            );
        }
    }
}

fn method(name: &str) -> HttpMethod {
    match name {
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "patch" => HttpMethod::Patch,
        "delete" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

fn media(schema: &str) -> &'static str {
    match schema {
        "Component" => "application/wasm",
        "Text" => "application/openmetrics-text",
        _ => "application/json",
    }
}

fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let parameters = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                .build()
        })
        .collect::<Vec<_>>();
    // A 204 has no body to describe.
    let success = if route.status == 204 {
        ResponseBuilder::new().description("success, no content")
    } else {
        ResponseBuilder::new().description("success").content(
            media(route.response),
            Content::new(Some(Ref::from_schema_name(route.response))),
        )
    };
    let responses = ResponsesBuilder::new()
        .response(route.status.to_string(), success)
        .response(
            "default",
            ResponseBuilder::new().description("error").content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("Error"))),
            ),
        )
        .build();
    let mut builder = OperationBuilder::new()
        .summary(Some(route.summary))
        .parameters(Some(parameters))
        .responses(responses);
    if let Some(request) = route.request {
        builder = builder.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    media(request),
                    Content::new(Some(Ref::from_schema_name(request))),
                )
                .build(),
        ));
    }
    let public = route.path.starts_with("/health")
        || route.path == "/metrics"
        || route.path == "/api/v1/auth/login";
    if public {
        builder = builder.securities(Some(Vec::new()));
    }
    builder.build()
}

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    serde_json::to_value(&document).unwrap_or_default()
});

/// The document, built once.
pub fn document() -> &'static Value {
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_a_route_names_is_in_the_document() {
        let schemas = &document()["components"]["schemas"];
        for route in ROUTES {
            for name in route.request.iter().chain([&route.response]) {
                assert!(
                    schemas[*name].is_object(),
                    "{} {} names schema {name}, which the document lacks",
                    route.method,
                    route.path
                );
            }
        }
        assert!(schemas["Error"].is_object());
    }

    #[test]
    fn request_constraints_come_from_the_handler_types() {
        let schemas = &document()["components"]["schemas"];
        let create = &schemas["CreateTask"];
        assert_eq!(create["additionalProperties"], false);
        assert_eq!(create["required"], serde_json::json!(["plugin", "type"]));
        assert_eq!(create["properties"]["labels"]["maxProperties"], 32);
        assert_eq!(create["properties"]["priority"]["maximum"], 1000);
        assert_eq!(
            schemas["ProgressReport"]["properties"]["metrics"]["maxProperties"],
            64
        );
        assert_eq!(
            schemas["NewUser"]["properties"]["password"]["writeOnly"],
            true
        );
    }
}
