//! A GitLab v4 REST client over the host's `http` import: authentication, retries, rate
//! limits and pagination. Everything leaves through the host, so the operator's allow-list
//! is the only way out.
//!
//! - 401, 403 and 404 fail at once and are not retried (`GITLAB_UNAUTHORIZED`,
//!   `GITLAB_FORBIDDEN`, `GITLAB_NOT_FOUND`).
//! - 429 waits for `Retry-After` (or `RateLimit-Reset`), at most [`MAX_RATE_LIMIT_WAITS`]
//!   times per request; when a response says `RateLimit-Remaining: 0`, the next request waits
//!   for `RateLimit-Reset` first.
//! - 5xx and transport failures are retried with exponential backoff, [`MAX_RETRIES`] times.
//! - Pages follow the `Link: <…>; rel="next"` header (offset or keyset pagination), else
//!   `X-Next-Page`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskhost_plugin_sdk::http::{self, Request, Response};
use taskhost_plugin_sdk::{ErrorKind, TaskError, Value, checkpoint, log, sleep};
use url::Url;

pub const MAX_RETRIES: u32 = 3;
pub const MAX_RATE_LIMIT_WAITS: u32 = 10;
/// Longest single wait for a rate limit.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT_MS: u32 = 60_000;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    pub retries: u64,
    pub rate_limit_waits: u64,
    pub pages: u64,
}

pub struct Client {
    base: Url,
    auth: (String, String),
    pub page_size: u32,
    pub max_pages: Option<u64>,
    /// Epoch seconds until which GitLab said no requests remain.
    blocked_until: Option<u64>,
    pub stats: Stats,
}

/// One page of a listing.
pub struct Page {
    pub items: Vec<Value>,
    /// `X-Total`, when GitLab sends it (not for keyset pagination or very large sets).
    pub total: Option<u64>,
    pub page: u64,
    pub total_pages: Option<u64>,
}

/// The API root: `api_endpoint` as given when it ends in `/api/v4`, else with it appended.
pub fn api_root(endpoint: &str) -> Result<Url, String> {
    let mut url =
        Url::parse(endpoint.trim()).map_err(|e| format!("api_endpoint is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("api_endpoint must be an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("api_endpoint must not carry credentials; use credentials.access_token".into());
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    let path = if path.ends_with("/api/v4") {
        path
    } else {
        format!("{path}/api/v4")
    };
    url.set_path(&format!("{path}/"));
    Ok(url)
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header_u64(response: &Response, name: &str) -> Option<u64> {
    response.header(name)?.trim().parse().ok()
}

/// The `rel="next"` target of a `Link` header.
fn next_link(response: &Response) -> Option<String> {
    response.header("link")?.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

impl Client {
    pub fn new(
        base: Url,
        token: &str,
        oauth: bool,
        page_size: u32,
        max_pages: Option<u64>,
    ) -> Self {
        let auth = if oauth {
            ("Authorization".to_owned(), format!("Bearer {token}"))
        } else {
            ("PRIVATE-TOKEN".to_owned(), token.to_owned())
        };
        Self {
            base,
            auth,
            page_size,
            max_pages,
            blocked_until: None,
            stats: Stats::default(),
        }
    }

    /// `base/seg/seg…?query`, each segment percent-encoded (a project path's `/` included).
    pub fn endpoint(&self, segments: &[&str], query: &[(String, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn wait(&mut self, duration: Duration, why: &str) -> Result<(), TaskError> {
        log::info(&format!("waiting {:.1} s: {why}", duration.as_secs_f64()));
        sleep(duration)?;
        Ok(())
    }

    /// GET with retries; any 2xx response is returned.
    pub fn get(&mut self, url: &Url) -> Result<Response, TaskError> {
        let what = url.path().to_owned();
        let (mut retries, mut rate_waits) = (0u32, 0u32);
        loop {
            checkpoint()?;
            if let Some(until) = self.blocked_until.take() {
                let now = now_epoch();
                if until > now {
                    let wait = Duration::from_secs(until - now).min(MAX_RATE_LIMIT_WAIT);
                    self.stats.rate_limit_waits += 1;
                    self.wait(
                        wait,
                        "GitLab reported no requests remaining (RateLimit-Reset)",
                    )?;
                }
            }
            self.stats.requests += 1;
            let request = Request {
                method: "GET".to_owned(),
                url: url.to_string(),
                headers: vec![
                    self.auth.clone(),
                    ("Accept".to_owned(), "application/json".to_owned()),
                ],
                body: None,
                timeout_ms: Some(REQUEST_TIMEOUT_MS),
            };
            let transient = match http::fetch(&request) {
                Ok(response) => {
                    if header_u64(&response, "ratelimit-remaining") == Some(0) {
                        self.blocked_until = header_u64(&response, "ratelimit-reset");
                    }
                    match response.status {
                        200..=299 => return Ok(response),
                        401 => {
                            return Err(TaskError::fatal(
                                "GITLAB_UNAUTHORIZED",
                                format!("GitLab rejected the access token (401) for {what}"),
                            ));
                        }
                        403 => {
                            return Err(TaskError::fatal(
                                "GITLAB_FORBIDDEN",
                                format!("the token may not read {what} (403)"),
                            ));
                        }
                        404 => {
                            return Err(TaskError::fatal(
                                "GITLAB_NOT_FOUND",
                                format!("{what} was not found (404)"),
                            ));
                        }
                        429 => {
                            if rate_waits >= MAX_RATE_LIMIT_WAITS {
                                return Err(TaskError::retryable(
                                    "GITLAB_RATE_LIMITED",
                                    format!(
                                        "still rate limited after {rate_waits} waits on {what}"
                                    ),
                                ));
                            }
                            rate_waits += 1;
                            self.stats.rate_limit_waits += 1;
                            let wait = header_u64(&response, "retry-after")
                                .map(Duration::from_secs)
                                .or_else(|| {
                                    header_u64(&response, "ratelimit-reset").map(|reset| {
                                        Duration::from_secs(reset.saturating_sub(now_epoch()))
                                    })
                                })
                                .unwrap_or(BACKOFF_BASE * 2u32.pow(rate_waits.min(7)))
                                .min(MAX_RATE_LIMIT_WAIT);
                            self.blocked_until = None;
                            self.wait(wait, &format!("rate limited (429) on {what}"))?;
                            continue;
                        }
                        500..=599 => format!("GitLab answered {} for {what}", response.status),
                        status => {
                            return Err(TaskError::fatal(
                                "GITLAB_HTTP_ERROR",
                                format!("GitLab answered {status} for {what}"),
                            ));
                        }
                    }
                }
                Err(error) => match error.kind {
                    ErrorKind::Failed | ErrorKind::Timeout | ErrorKind::Unavailable => {
                        format!("request to {what} failed: {}", error.message)
                    }
                    ErrorKind::NotGranted | ErrorKind::Denied => {
                        return Err(TaskError::fatal(
                            "GITLAB_NOT_ALLOWED",
                            format!(
                                "the operator has not allowed this plugin to reach the GitLab host: {}",
                                error.message
                            ),
                        ));
                    }
                    _ => return Err(error.into()),
                },
            };
            if retries >= MAX_RETRIES {
                return Err(TaskError::retryable(
                    "GITLAB_UNAVAILABLE",
                    format!("{transient}; gave up after {retries} retries"),
                ));
            }
            retries += 1;
            self.stats.retries += 1;
            let backoff = (BACKOFF_BASE * 2u32.pow(retries - 1)).min(BACKOFF_MAX);
            self.wait(
                backoff,
                &format!("{transient}, retry {retries} of {MAX_RETRIES}"),
            )?;
        }
    }

    pub fn get_json(&mut self, url: &Url) -> Result<Value, TaskError> {
        let response = self.get(url)?;
        serde_json::from_slice(&response.body).map_err(|e| {
            TaskError::retryable(
                "GITLAB_BAD_RESPONSE",
                format!("{} did not answer JSON: {e}", url.path()),
            )
        })
    }

    /// Walks every page of a listing, calling `each` per page.
    pub fn paginate(
        &mut self,
        first: Url,
        mut each: impl FnMut(&mut Self, Page) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        let mut url = first;
        let mut page_number = 1;
        loop {
            let response = self.get(&url)?;
            self.stats.pages += 1;
            let items = match serde_json::from_slice::<Value>(&response.body) {
                Ok(Value::Array(items)) => items,
                Ok(_) | Err(_) => {
                    return Err(TaskError::retryable(
                        "GITLAB_BAD_RESPONSE",
                        format!("{} did not answer a JSON list", url.path()),
                    ));
                }
            };
            let next = next_link(&response)
                .and_then(|link| Url::parse(&link).ok())
                .or_else(|| {
                    let page = header_u64(&response, "x-next-page")?;
                    let mut next = url.clone();
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .filter(|(k, _)| k != "page")
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    next.query_pairs_mut()
                        .clear()
                        .extend_pairs(pairs)
                        .append_pair("page", &page.to_string());
                    Some(next)
                });
            let empty = items.is_empty();
            each(
                self,
                Page {
                    items,
                    total: header_u64(&response, "x-total"),
                    page: page_number,
                    total_pages: header_u64(&response, "x-total-pages"),
                },
            )?;
            page_number += 1;
            if self.max_pages.is_some_and(|max| page_number > max) {
                log::info(&format!(
                    "stopping after {} pages (pagination.max_pages)",
                    page_number - 1
                ));
                return Ok(());
            }
            match next {
                Some(next) if !empty => url = next,
                _ => return Ok(()),
            }
        }
    }
}
