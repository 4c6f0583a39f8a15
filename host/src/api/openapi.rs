//! `GET /api/v1/openapi.json`: the OpenAPI 3 description of the API, built from [`ROUTES`],
//! the one table of every route (the tests walk it to reach every route).

use serde_json::{Map, Value, json};

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
        "A task's log lines (since, limit; follow=true streams server-sent events)",
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
        "List runners",
        200,
        None,
        "Object",
    ),
    route(
        "get",
        "/api/v1/runners/{id}",
        "One runner",
        200,
        None,
        "Object",
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
        "Runner token: a sign of life with the jobs it runs; answers jobs to stop",
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
        "Task statistics (label.<key>, created_after, created_before)",
        200,
        None,
        "Object",
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

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for Route {
        method,
        path,
        summary,
        status,
        request,
        response,
    } in ROUTES
    {
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let media = if *response == "Text" {
            "application/openmetrics-text"
        } else {
            "application/json"
        };
        let mut operation = json!({
            "summary": summary,
            "parameters": parameters,
            "responses": {
                status.to_string(): {"description": "success", "content": {media: {"schema": schema_ref(response)}}},
                "default": {"description": "error", "content": {"application/json": {"schema": schema_ref("Error")}}},
            },
        });
        if let Some(request) = request {
            let media = if *request == "Component" {
                "application/wasm"
            } else {
                "application/json"
            };
            operation["requestBody"] =
                json!({"required": true, "content": {media: {"schema": schema_ref(request)}}});
        }
        let public =
            path.starts_with("/health") || *path == "/metrics" || *path == "/api/v1/auth/login";
        if public {
            operation["security"] = json!([]);
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|item| item.insert(method.to_string(), operation));
    }
    let object = json!({"type": "object"});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "taskhost", "version": env!("CARGO_PKG_VERSION"), "description": "Background tasks of many job families, each a sandboxed WebAssembly plugin, behind one API."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Task": {"type": "object", "required": ["id", "plugin", "type", "status"], "properties": {
                    "id": {"type": "string"}, "plugin": {"type": "string"}, "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["queued", "scheduled", "running", "paused", "completed", "failed", "cancelled"]},
                    "executor": {"type": "string", "enum": ["plugin", "external"]},
                    "input": {}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "priority": {"type": "integer"}, "owner": {"type": "string"}, "progress": schema_ref("Progress"),
                    "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"}, "timeout_s": {"type": "integer"},
                    "result": {}, "error": schema_ref("TaskError"), "depends_on": {"type": "array", "items": {"type": "string"}},
                    "parent_id": {"type": "string", "nullable": true},
                    "created_at": {"type": "string", "format": "date-time"}, "scheduled_at": {"type": "string", "format": "date-time", "nullable": true},
                    "started_at": {"type": "string", "format": "date-time", "nullable": true}, "finished_at": {"type": "string", "format": "date-time", "nullable": true},
                    "updated_at": {"type": "string", "format": "date-time"},
                }},
                "CreateTask": {"type": "object", "required": ["plugin", "type"], "additionalProperties": false, "properties": {
                    "plugin": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"},
                    "type": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"},
                    "input": {}, "id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                    "labels": {"type": "object", "maxProperties": 32, "propertyNames": {"pattern": "^[A-Za-z0-9._/-]{1,64}$"},
                        "additionalProperties": {"type": "string", "maxLength": 256, "pattern": "^[^=\\x00-\\x1f\\x7f]*$"}},
                    "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
                    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                    "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604800},
                    "run_at": {"type": "string", "format": "date-time"},
                    "depends_on": {"type": "array", "maxItems": 100, "items": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}},
                    "executor": {"type": "string", "enum": ["plugin", "external"]},
                    "reporters": {"type": "array", "maxItems": 16, "description": "users besides the owner who may report on an external task", "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"}},
                }},
                "Progress": {"type": "object", "properties": {
                    "processed": {"type": "integer", "nullable": true}, "total": {"type": "integer", "nullable": true},
                    "percentage": {"type": "number", "nullable": true}, "current_step": {"type": "string", "nullable": true},
                    "message": {"type": "string", "nullable": true}, "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                }},
                "ProgressReport": {"type": "object", "additionalProperties": false,
                    "description": "processed may not exceed total; a task holds at most 64 distinct metrics and 16 KiB of progress",
                    "properties": {
                    "processed": {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64}, "total": {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64},
                    "current_step": {"type": "string", "maxLength": 1024}, "message": {"type": "string", "maxLength": 1024},
                    "metrics": {"type": "object", "maxProperties": 64, "propertyNames": {"pattern": "^[A-Za-z0-9_.:/*-]{1,64}$"}, "additionalProperties": {"type": "number"}},
                }},
                "TaskUpdate": {"type": "object", "additionalProperties": false, "properties": {
                    "status": {"type": "string", "enum": ["queued", "scheduled", "running", "paused", "completed", "failed", "cancelled"]},
                    "result": {}, "error": schema_ref("ReportedError"), "progress": schema_ref("ProgressReport"),
                }},
                "ReportedError": {"type": "object", "required": ["code", "message"], "additionalProperties": false, "properties": {
                    "code": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "message": {"type": "string", "maxLength": 4096}, "retryable": {"type": "boolean"},
                }},
                "TaskError": {"type": "object", "nullable": true, "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}}},
                "TaskProgressView": object,
                "Event": {"type": "object", "properties": {
                    "seq": {"type": "integer"}, "task_id": {"type": "string"}, "type": {"type": "string"}, "data": {}, "timestamp": {"type": "string", "format": "date-time"},
                }},
                "Message": {"type": "object", "required": ["type"], "additionalProperties": false, "properties": {"type": {"type": "string", "minLength": 1, "maxLength": 64}, "data": {}}},
                "TaskPage": {"type": "object", "properties": {"data": {"type": "array", "items": schema_ref("Task")}, "meta": schema_ref("PageMeta")}},
                "EventPage": {"type": "object", "properties": {"data": {"type": "array", "items": schema_ref("Event")}, "meta": object}},
                "LogPage": {"type": "object", "properties": {"data": {"type": "array", "items": object}, "meta": object}},
                "RecordPage": {"type": "object", "properties": {"data": {"type": "array", "items": object}, "meta": schema_ref("PageMeta")}},
                "PageMeta": {"type": "object", "properties": {"total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"}, "has_more": {"type": "boolean"}}},
                "Login": {"type": "object", "required": ["username", "password"], "additionalProperties": false, "properties": {"username": {"type": "string"}, "password": {"type": "string", "writeOnly": true}}},
                "Token": {"type": "object", "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"}, "expires_in": {"type": "integer"}, "user": object}},
                "ApiKeyRequest": {"type": "object", "required": ["name"], "additionalProperties": false, "not": {"required": ["role", "permissions"]}, "description": "role or permissions, not both; expires_at in the future", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "\\S"}, "role": {"type": "string", "nullable": true, "enum": ["admin", "user", "viewer", null]}, "permissions": {"type": "array", "nullable": true, "maxItems": 64, "items": {"type": "string"}}, "runner_labels": {"type": "array", "nullable": true, "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 64}}, "expires_at": {"type": "string", "nullable": true, "format": "date-time"}}},
                "RoleChange": {"type": "object", "required": ["role"], "additionalProperties": false, "properties": {"role": {"type": "string", "enum": ["admin", "user", "viewer"]}}},
                "ApiKey": object,
                "NewUser": {"type": "object", "required": ["username", "password"], "additionalProperties": false, "properties": {"username": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"}, "password": {"type": "string", "writeOnly": true, "minLength": 8, "maxLength": 1024}, "role": {"type": "string", "enum": ["admin", "user", "viewer"]}}},
                "RunnerRegistration": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 128}, "labels": {"type": "array", "maxItems": 32, "items": {"type": "string", "minLength": 1, "maxLength": 128}}, "capacity": {"type": "integer", "minimum": 1, "maximum": 1024}}},
                "Plugin": object, "PluginList": object, "Queue": object, "QueueList": object, "Object": object, "User": object,
                "Component": {"type": "string", "format": "binary"},
                "Text": {"type": "string"},
                "StreamFrame": {"type": "object", "description": "Server frames: connected, task events (seq, task_id, type, data, timestamp), system, subscribed, unsubscribed, pong, error. Client frames: subscribe {topics, after_seq?}, unsubscribe {topics}, ping.", "properties": {"type": {"type": "string"}}},
                "Error": {"type": "object", "properties": {
                    "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": object}},
                    "status": {"type": "integer"}, "request_id": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
                }},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    })
}
