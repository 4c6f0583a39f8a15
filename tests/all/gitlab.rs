//! The bundled `gitlab` plugin against a GitLab-compatible fake on loopback: the right paths
//! and record counts across pages for all 17 types, rate limits waited out, a 5xx retried, a
//! 401 failing at once, DISCOVER_AREAS children, and the token never shown.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskhost::runtime::Grants;
use warp::Filter;
use warp::http::{HeaderMap, Response, StatusCode};

use crate::harness::{Api, TestServer};

/// What the fake answers for one request instead of the data.
#[derive(Clone, Debug)]
enum Fault {
    RateLimited { retry_after_s: u64 },
    ServerError,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    query: BTreeMap<String, String>,
    authorized: bool,
    at: Instant,
}

#[derive(Default)]
struct FakeState {
    token: String,
    lists: BTreeMap<String, Vec<Value>>,
    singles: BTreeMap<String, Value>,
    faults: Mutex<BTreeMap<String, VecDeque<Fault>>>,
    seen: Mutex<Vec<Seen>>,
}

/// A GitLab v4 API on 127.0.0.1 with offset pagination (`page`, `per_page`, `X-Total`,
/// `X-Next-Page`, `Link`) and keyset pagination (`pagination=keyset`, `id_after`, `Link`).
pub struct FakeGitlab {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
}

fn items(n: usize, id_base: u64, extra: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut item = extra(i);
            item["id"] = json!(id_base + i as u64);
            item
        })
        .collect()
}

fn respond(
    state: &FakeState,
    path: &str,
    raw_query: &str,
    headers: &HeaderMap,
) -> Response<String> {
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let authorized = headers
        .get("private-token")
        .is_some_and(|t| t.as_bytes() == state.token.as_bytes());
    state.seen.lock().unwrap().push(Seen {
        path: path.to_owned(),
        query: query.clone(),
        authorized,
        at: Instant::now(),
    });
    let json_response = |status: StatusCode, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body.to_string())
            .unwrap()
    };
    if !authorized {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "401 Unauthorized"}),
        );
    }
    let fault_key = format!(
        "{path}?page={}",
        query.get("page").map(String::as_str).unwrap_or("1")
    );
    let fault = state
        .faults
        .lock()
        .unwrap()
        .get_mut(&fault_key)
        .and_then(VecDeque::pop_front);
    match fault {
        Some(Fault::RateLimited { retry_after_s }) => {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", retry_after_s.to_string())
                .header("ratelimit-remaining", "0")
                .body("Retry later".into())
                .unwrap();
        }
        Some(Fault::ServerError) => {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"message": "500 Internal Server Error"}),
            );
        }
        None => {}
    }
    let Some(path) = path.strip_prefix("/api/v4") else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    };
    if let Some(single) = state.singles.get(path) {
        return json_response(StatusCode::OK, single.clone());
    }
    let Some(list) = state.lists.get(path) else {
        return json_response(StatusCode::NOT_FOUND, json!({"message": "404 Not Found"}));
    };
    let per_page: usize = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(20)
        .min(100);
    let link = |params: &[(&str, String)]| {
        let mut next: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| !params.iter().any(|(p, _)| p == k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next.extend(params.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        format!("http://{host}/api/v4{path}?{encoded}")
    };
    if query.get("pagination").map(String::as_str) == Some("keyset") {
        let after: u64 = query
            .get("id_after")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let rest: Vec<&Value> = list
            .iter()
            .filter(|v| v["id"].as_u64().unwrap() > after)
            .collect();
        let page: Vec<Value> = rest.iter().take(per_page).map(|v| (*v).clone()).collect();
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json");
        if rest.len() > per_page {
            let last = page.last().unwrap()["id"].as_u64().unwrap();
            response = response.header(
                "link",
                format!(
                    "<{}>; rel=\"next\"",
                    link(&[("id_after", last.to_string())])
                ),
            );
        }
        return response.body(Value::Array(page).to_string()).unwrap();
    }
    let page: usize = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pages = list.len().div_ceil(per_page).max(1);
    let slice: Vec<Value> = list
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let next = if page < pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let mut links = vec![
        format!("<{}>; rel=\"first\"", link(&[("page", "1".into())])),
        format!("<{}>; rel=\"last\"", link(&[("page", pages.to_string())])),
    ];
    if page < pages {
        links.insert(
            0,
            format!("<{}>; rel=\"next\"", link(&[("page", next.clone())])),
        );
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("x-total", list.len().to_string())
        .header("x-total-pages", pages.to_string())
        .header("x-per-page", per_page.to_string())
        .header("x-page", page.to_string())
        .header("x-next-page", next)
        .header("link", links.join(", "))
        .body(Value::Array(slice).to_string())
        .unwrap()
}

impl FakeGitlab {
    pub async fn start(token: &str) -> Self {
        let mut state = FakeState {
            token: token.to_owned(),
            ..FakeState::default()
        };
        let named = |prefix: &'static str| move |i: usize| json!({"name": format!("{prefix}-{i}")});
        let titled =
            |i: usize| json!({"iid": i + 1, "title": format!("item {i}"), "state": "opened"});
        let lists = &mut state.lists;
        lists.insert(
            "/projects/42/members/all".into(),
            items(7, 100, named("user")),
        );
        lists.insert("/groups/7/members/all".into(), items(5, 200, named("user")));
        lists.insert("/projects/42/issues".into(), items(250, 1000, titled));
        lists.insert("/groups/7/issues".into(), items(11, 5000, titled));
        lists.insert("/issues".into(), items(9, 6000, titled));
        lists.insert(
            "/projects/42/merge_requests".into(),
            items(120, 2000, titled),
        );
        lists.insert(
            "/projects/42/repository/commits".into(),
            (0..30)
                .map(|i| json!({"id": format!("{:040x}", i + 1), "title": format!("commit {i}")}))
                .collect(),
        );
        lists.insert(
            "/projects/42/repository/branches".into(),
            (0..5)
                .map(|i| json!({"name": format!("branch-{i}"), "merged": false}))
                .collect(),
        );
        lists.insert(
            "/projects/42/repository/tags".into(),
            (0..3)
                .map(|i| json!({"name": format!("v1.{i}"), "message": ""}))
                .collect(),
        );
        lists.insert(
            "/projects/42/pipelines".into(),
            items(45, 3000, |_| json!({"status": "success"})),
        );
        lists.insert(
            "/projects/42/jobs".into(),
            items(60, 4000, |_| json!({"status": "success"})),
        );
        lists.insert(
            "/projects/42/pipelines/3001/jobs".into(),
            items(4, 4500, |_| json!({"status": "failed"})),
        );
        lists.insert(
            "/projects/42/deployments".into(),
            items(12, 7000, |_| json!({"status": "success"})),
        );
        lists.insert(
            "/projects/42/environments".into(),
            items(3, 8000, named("env")),
        );
        lists.insert(
            "/projects/42/vulnerabilities".into(),
            items(2, 9000, |_| json!({"severity": "high"})),
        );
        lists.insert(
            "/groups/7/descendant_groups".into(),
            items(3, 8, named("subgroup")),
        );
        lists.insert("/groups/7/projects".into(), items(4, 42, named("project")));
        lists.insert("/groups".into(), items(6, 7, named("group")));
        lists.insert("/projects".into(), items(230, 10_000, named("project")));
        for id in [42, 43, 44, 45] {
            state.singles.insert(
                format!("/projects/{id}"),
                json!({"id": id, "path_with_namespace": format!("acme/p{id}"), "statistics": {"commit_count": 30}}),
            );
        }
        state.singles.insert(
            "/projects/acme%2Fwidgets".into(),
            json!({"id": 42, "path_with_namespace": "acme/widgets"}),
        );
        for id in [7, 8, 9, 10] {
            state.singles.insert(
                format!("/groups/{id}"),
                json!({"id": id, "full_path": format!("acme/g{id}")}),
            );
        }
        let state = Arc::new(state);
        let shared = state.clone();
        let route = warp::any()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .map(
                move |path: warp::path::FullPath, query: String, headers: HeaderMap| {
                    respond(&shared, path.as_str(), &query, &headers)
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self { addr, state }
    }

    fn fail(&self, path_and_page: &str, faults: &[Fault]) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(path_and_page.to_owned(), faults.iter().cloned().collect());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/api/v4", self.addr)
    }
}

pub fn token() -> String {
    format!("glpat-{}", "Fk3Tq8Wz1Pd6Rm4Jx2Lc")
}

async fn gitlab_server(fake: &FakeGitlab) -> TestServer {
    let mut grants = Grants::default();
    grants
        .http
        .allow
        .push(format!("127.0.0.1:{}", fake.addr.port()));
    TestServer::builder()
        .plugin_grants("gitlab", grants)
        .start()
        .await
}

fn input(fake: &FakeGitlab, access_token: &str, options: Value) -> Value {
    json!({
        "api_endpoint": fake.endpoint(),
        "credentials": {"access_token": access_token},
        "options": options,
    })
}

async fn run(api: &Api<'_>, task_type: &str, input: Value) -> Value {
    let task = api
        .create(json!({"plugin": "gitlab", "type": task_type, "input": input}))
        .await;
    api.finished(task["id"].as_str().unwrap()).await
}

async fn record_total(api: &Api<'_>, id: &str, collection: &str) -> u64 {
    let (_, page) = api
        .get(&format!(
            "/api/v1/tasks/{id}/records?collection={collection}&limit=1"
        ))
        .await;
    page["meta"]["total"].as_u64().unwrap()
}

#[tokio::test]
async fn every_task_type_fetches_the_right_paths_and_every_page() {
    let token = token();
    let fake = FakeGitlab::start(&token).await;
    let server = gitlab_server(&fake).await;
    let api = server.api();
    let project = json!({"resource_type": "project", "resource_id": 42});
    let with = |extra: Value| {
        let mut options = project.clone();
        options
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        options
    };
    // (type, options, collection, count, path fetched, pages fetched)
    let cases: Vec<(&str, Value, &str, u64, &str, usize)> = vec![
        (
            "FETCH_PROJECTS",
            json!({"resource_type": "group", "resource_id": 7}),
            "projects",
            4,
            "/api/v4/groups/7/projects",
            1,
        ),
        (
            "FETCH_PROJECTS",
            json!({"resource_type": "instance"}),
            "projects",
            230,
            "/api/v4/projects",
            3,
        ),
        (
            "FETCH_GROUPS",
            json!({"resource_type": "group", "resource_id": 7}),
            "groups",
            3,
            "/api/v4/groups/7/descendant_groups",
            1,
        ),
        (
            "FETCH_GROUPS",
            json!({"resource_type": "instance"}),
            "groups",
            6,
            "/api/v4/groups",
            1,
        ),
        (
            "FETCH_PROJECT_DETAILS",
            project.clone(),
            "projects",
            1,
            "/api/v4/projects/42",
            1,
        ),
        (
            "FETCH_PROJECT_DETAILS",
            json!({"resource_id": "acme/widgets"}),
            "projects",
            1,
            "/api/v4/projects/acme%2Fwidgets",
            1,
        ),
        (
            "FETCH_GROUP_DETAILS",
            json!({"resource_type": "group", "resource_id": 7}),
            "groups",
            1,
            "/api/v4/groups/7",
            1,
        ),
        (
            "FETCH_PROJECT_MEMBERS",
            project.clone(),
            "members",
            7,
            "/api/v4/projects/42/members/all",
            1,
        ),
        (
            "FETCH_GROUP_MEMBERS",
            json!({"resource_id": 7}),
            "members",
            5,
            "/api/v4/groups/7/members/all",
            1,
        ),
        (
            "FETCH_ISSUES",
            with(
                json!({"updated_after": "2025-01-01T00:00:00Z", "pagination": {"page_size": 100}}),
            ),
            "issues",
            250,
            "/api/v4/projects/42/issues",
            3,
        ),
        (
            "FETCH_ISSUES",
            json!({"resource_type": "group", "resource_id": 7}),
            "issues",
            11,
            "/api/v4/groups/7/issues",
            1,
        ),
        (
            "FETCH_ISSUES",
            json!({"resource_type": "instance"}),
            "issues",
            9,
            "/api/v4/issues",
            1,
        ),
        (
            "FETCH_MERGE_REQUESTS",
            with(json!({"state": "merged", "pagination": {"page_size": 50}})),
            "merge_requests",
            120,
            "/api/v4/projects/42/merge_requests",
            3,
        ),
        (
            "FETCH_COMMITS",
            with(
                json!({"since": "2025-01-01T00:00:00Z", "ref_name": "main", "pagination": {"page_size": 20}}),
            ),
            "commits",
            30,
            "/api/v4/projects/42/repository/commits",
            2,
        ),
        (
            "FETCH_BRANCHES",
            project.clone(),
            "branches",
            5,
            "/api/v4/projects/42/repository/branches",
            1,
        ),
        (
            "FETCH_TAGS",
            project.clone(),
            "tags",
            3,
            "/api/v4/projects/42/repository/tags",
            1,
        ),
        (
            "FETCH_PIPELINES",
            with(json!({"updated_after": "2025-01-01T00:00:00Z", "pagination": {"page_size": 20}})),
            "pipelines",
            45,
            "/api/v4/projects/42/pipelines",
            3,
        ),
        (
            "FETCH_JOBS",
            project.clone(),
            "jobs",
            60,
            "/api/v4/projects/42/jobs",
            1,
        ),
        (
            "FETCH_JOBS",
            with(json!({"pipeline_id": 3001})),
            "jobs",
            4,
            "/api/v4/projects/42/pipelines/3001/jobs",
            1,
        ),
        (
            "FETCH_DEPLOYMENTS",
            with(json!({"updated_after": "2025-01-01T00:00:00Z", "pagination": {"page_size": 5}})),
            "deployments",
            12,
            "/api/v4/projects/42/deployments",
            3,
        ),
        (
            "FETCH_ENVIRONMENTS",
            project.clone(),
            "environments",
            3,
            "/api/v4/projects/42/environments",
            1,
        ),
        (
            "FETCH_VULNERABILITIES",
            project.clone(),
            "vulnerabilities",
            2,
            "/api/v4/projects/42/vulnerabilities",
            1,
        ),
    ];
    for (task_type, options, collection, count, path, pages) in cases {
        fake.clear();
        let done = run(&api, task_type, input(&fake, &token, options.clone())).await;
        assert_eq!(done["status"], "completed", "{task_type} {options}: {done}");
        let result = &done["result"];
        assert_eq!(
            result["counts"][collection], count,
            "{task_type} {options}: {result}"
        );
        let id = done["id"].as_str().unwrap();
        assert_eq!(
            record_total(&api, id, collection).await,
            count,
            "{task_type} records"
        );
        let seen = fake.seen();
        assert!(
            seen.iter().all(|s| s.authorized),
            "{task_type}: every request carries the token"
        );
        let fetched: Vec<&Seen> = seen.iter().filter(|s| s.path == path).collect();
        assert_eq!(fetched.len(), pages, "{task_type} {options}: {seen:?}");
        assert_eq!(
            seen.len(),
            pages,
            "{task_type}: nothing else was fetched: {seen:?}"
        );
        assert_eq!(
            result["pages"].as_u64().unwrap_or(1).max(1),
            pages as u64,
            "{result}"
        );
        // Incremental options reach GitLab as query parameters.
        if let Some(options) = options.as_object() {
            for key in ["updated_after", "state", "since", "ref_name"] {
                if let Some(value) = options.get(key) {
                    assert_eq!(
                        fetched[0].query.get(key).map(String::as_str),
                        value.as_str(),
                        "{task_type} {key}"
                    );
                }
            }
        }
        if task_type == "FETCH_DEPLOYMENTS" {
            assert_eq!(
                fetched[0].query.get("order_by").map(String::as_str),
                Some("updated_at")
            );
        }
        if path == "/api/v4/projects" {
            assert_eq!(
                fetched[0].query.get("pagination").map(String::as_str),
                Some("keyset")
            );
            assert!(
                fetched[1].query.contains_key("id_after"),
                "keyset pages follow the Link header"
            );
        }
    }
}

#[tokio::test]
async fn rate_limits_are_waited_out_a_server_error_retried_and_a_401_fails_at_once() {
    let token = token();
    let fake = FakeGitlab::start(&token).await;
    let server = gitlab_server(&fake).await;
    let api = server.api();
    let options = json!({"resource_type": "project", "resource_id": 42});

    fake.fail(
        "/api/v4/projects/42/issues?page=2",
        &[Fault::RateLimited { retry_after_s: 1 }],
    );
    let done = run(&api, "FETCH_ISSUES", input(&fake, &token, options.clone())).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["counts"]["issues"], 250);
    assert_eq!(done["result"]["rate_limit_waits"], 1, "{}", done["result"]);
    let page2: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| {
            s.path == "/api/v4/projects/42/issues"
                && s.query.get("page").map(String::as_str) == Some("2")
        })
        .collect();
    assert_eq!(page2.len(), 2, "the 429 and the retry");
    assert!(
        page2[1].at.duration_since(page2[0].at) >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );

    fake.clear();
    fake.fail(
        "/api/v4/projects/42/merge_requests?page=1",
        &[Fault::ServerError],
    );
    let done = run(
        &api,
        "FETCH_MERGE_REQUESTS",
        input(&fake, &token, options.clone()),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["retries"], 1, "{}", done["result"]);
    assert_eq!(done["result"]["counts"]["merge_requests"], 120);
    assert_eq!(
        done["attempt"], 1,
        "retried inside the run, not as a new attempt"
    );

    fake.clear();
    let done = run(
        &api,
        "FETCH_BRANCHES",
        input(&fake, "glpat-wrongwrongwrongwrong", options.clone()),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "GITLAB_UNAUTHORIZED", "{done}");
    assert_eq!(done["error"]["retryable"], false);
    assert_eq!(done["attempt"], 1, "a 401 is not retried: {done}");
    assert_eq!(fake.seen().len(), 1, "one request, no retries");

    // Not on the operator's allow-list: refused by the host, a clear failure.
    let mut elsewhere = input(&fake, &token, options);
    elsewhere["api_endpoint"] = json!("http://127.0.0.2:9/api/v4");
    let done = run(&api, "FETCH_TAGS", elsewhere).await;
    assert_eq!(done["error"]["code"], "GITLAB_NOT_ALLOWED", "{done}");
}

#[tokio::test]
async fn discover_areas_spawns_follow_up_tasks_that_complete_and_the_token_never_shows() {
    let token = token();
    let fake = FakeGitlab::start(&token).await;
    let server = gitlab_server(&fake).await;
    let api = server.api();
    let done = run(
        &api,
        "DISCOVER_AREAS",
        input(
            &fake,
            &token,
            json!({"resource_type": "group", "resource_id": 7,
                   "spawn": {"project": ["FETCH_PROJECT_DETAILS", "FETCH_ISSUES"], "group": ["FETCH_GROUP_DETAILS"]}}),
        ),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(
        result["counts"]["groups"], 4,
        "the group and its 3 descendants: {result}"
    );
    assert_eq!(result["counts"]["projects"], 4, "{result}");
    // 4 projects × 2 types + 4 groups × 1 type.
    assert_eq!(result["children"]["spawned"], 12, "{result}");
    let children: Vec<String> = result["children"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    let mut kinds = BTreeMap::new();
    let mut texts = vec![done.to_string()];
    for child in &children {
        let finished = api.finished(child).await;
        assert_eq!(finished["parent_id"], done["id"], "{finished}");
        // Project 42 has issues; the others answer 404 for their issues, which fails them.
        let ok = finished["status"] == "completed";
        let project_issues = finished["type"] == "FETCH_ISSUES";
        let on_42 = finished["input"]["options"]["resource_id"] == 42;
        assert!(ok || (project_issues && !on_42), "{finished}");
        if !ok {
            assert_eq!(finished["error"]["code"], "GITLAB_NOT_FOUND", "{finished}");
        }
        assert_eq!(
            finished["input"]["credentials"]["access_token"], "***",
            "{finished}"
        );
        *kinds
            .entry(finished["type"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        texts.push(finished.to_string());
        texts.push(serde_json::to_string(&api.events(child).await).unwrap());
    }
    assert_eq!(kinds["FETCH_PROJECT_DETAILS"], 4);
    assert_eq!(kinds["FETCH_ISSUES"], 4);
    assert_eq!(kinds["FETCH_GROUP_DETAILS"], 4);

    let id = done["id"].as_str().unwrap();
    for collection in ["groups", "projects"] {
        let (_, page) = api
            .get(&format!(
                "/api/v1/tasks/{id}/records?collection={collection}&limit=100"
            ))
            .await;
        texts.push(page.to_string());
    }
    texts.push(serde_json::to_string(&api.events(id).await).unwrap());
    for child in children.iter().chain([&id.to_owned()]) {
        let logs = server.logs(child).await;
        texts.push(logs);
    }
    for text in &texts {
        assert!(!text.contains(&token), "the token leaked: {text}");
    }
}

#[tokio::test]
async fn bad_gitlab_inputs_are_refused_with_400() {
    let fake = FakeGitlab::start("t").await;
    let server = gitlab_server(&fake).await;
    let api = server.api();
    for (task_type, options, endpoint) in [
        (
            "FETCH_ISSUES",
            json!({"resource_type": "project"}),
            fake.endpoint(),
        ),
        (
            "FETCH_BRANCHES",
            json!({"resource_type": "group", "resource_id": 7}),
            fake.endpoint(),
        ),
        (
            "FETCH_BRANCHES",
            json!({"resource_id": 42, "since": "yesterday"}),
            fake.endpoint(),
        ),
        (
            "FETCH_TAGS",
            json!({"resource_id": 42}),
            "ftp://gitlab.example.com".to_owned(),
        ),
        (
            "FETCH_TAGS",
            json!({"resource_id": "../../etc"}),
            fake.endpoint(),
        ),
        (
            "FETCH_TAGS",
            json!({"resource_id": 42, "pagination": {"page_size": 1000}}),
            fake.endpoint(),
        ),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/tasks",
                json!({"plugin": "gitlab", "type": task_type,
                       "input": {"api_endpoint": endpoint, "credentials": {"access_token": "x"}, "options": options}}),
            )
            .await;
        crate::harness::assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
}
