//! `taskhost:plugin/http`: outbound HTTP on the plugin's behalf.
//!
//! Only `http`/`https` URLs whose host the operator allowed are fetched. Redirects are followed
//! here rather than by the client so that every hop is checked against the allow-list. The
//! client ignores proxy settings in the environment (nothing ambient), and the body is read
//! in chunks so that a response larger than the cap is refused without buffering it.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, header};
use tracing::{debug, instrument};
use url::Url;

use crate::runtime::bindings::taskhost::plugin::http::{Host, Request, Response};
use crate::runtime::grants::Grants;
use crate::runtime::services::host_error;
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError, RuntimeShared};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Headers that carry credentials: dropped when a redirect leaves the origin they were meant
/// for, so a token is never handed to the next allowed host.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "private-token",
    "job-token",
    "x-api-key",
    "x-auth-token",
];

/// The runtime's shared HTTP client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub(crate) fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("taskhost/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

/// Parses `url` and checks it against the grants.
fn allowed_url(grants: &Grants, url: &str) -> Result<Url, HostError> {
    let url = Url::parse(url)
        .map_err(|e| host_error(ErrorKind::Invalid, format!("invalid URL {url:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(host_error(
            ErrorKind::Invalid,
            format!(
                "only http and https URLs can be fetched, not {}",
                url.scheme()
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(host_error(
            ErrorKind::Invalid,
            "credentials in URLs are not accepted; send them in a header",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| host_error(ErrorKind::Invalid, "the URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(0);
    if !grants.allows_host(host, port) {
        return Err(host_error(
            ErrorKind::Denied,
            format!("{host}:{port} is not in this plugin's http.allow grant"),
        ));
    }
    Ok(url)
}

fn internal_refused(host: &str, ip: std::net::IpAddr) -> HostError {
    host_error(
        ErrorKind::Denied,
        format!(
            "{host} is at the internal address {ip}, which the operator has not listed in http.allow"
        ),
    )
}

/// Resolves `url`'s host and refuses it when any address it names is internal and not listed
/// by address (so `*` or a name rebound to 169.254.169.254 or 127.0.0.1 reaches nothing).
async fn check_resolved(grants: &Grants, url: &Url) -> Result<(), HostError> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(0);
    let addresses: Vec<std::net::SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![(ip, port).into()],
        Some(url::Host::Ipv6(ip)) => vec![(ip, port).into()],
        _ => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| host_error(ErrorKind::Failed, format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    match addresses
        .iter()
        .find(|a| !grants.allows_address(a.ip(), port))
    {
        Some(refused) => Err(internal_refused(host, refused.ip())),
        None => Ok(()),
    }
}

/// Whether two URLs share scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn failed(e: reqwest::Error) -> HostError {
    if e.is_timeout() {
        host_error(ErrorKind::Timeout, "the request timed out")
    } else {
        // reqwest's messages name the URL and the cause, nothing of the host's.
        host_error(ErrorKind::Failed, e.to_string())
    }
}

/// Performs `request` under `grants`. Takes the shared parts rather than the `HostState`,
/// which is not `Sync` and so cannot be borrowed across awaits.
async fn fetch_checked(
    grants: &Grants,
    shared: &RuntimeShared,
    request: Request,
) -> Result<Response, HostError> {
    let config = &shared.config;
    if grants.http.allow.is_empty() {
        return Err(host_error(
            ErrorKind::NotGranted,
            "this plugin has no http grant",
        ));
    }
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| {
            [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::HEAD,
                Method::OPTIONS,
            ]
            .contains(m)
        })
        .ok_or_else(|| {
            host_error(
                ErrorKind::Invalid,
                format!("unsupported method {:?}", request.method),
            )
        })?;
    let mut headers = header::HeaderMap::new();
    for (name, value) in &request.headers {
        let name = header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| host_error(ErrorKind::Invalid, format!("invalid header name {name:?}")))?;
        // The host sets Host from the checked URL; a guest's own would reach another vhost.
        if name == header::HOST {
            continue;
        }
        let value = header::HeaderValue::from_str(value).map_err(|_| {
            host_error(
                ErrorKind::Invalid,
                format!("invalid value for header {name}"),
            )
        })?;
        headers.append(name, value);
    }
    let timeout = request
        .timeout_ms
        .map(|ms| Duration::from_millis(ms.into()))
        .unwrap_or(config.max_http_timeout)
        .min(config.max_http_timeout);

    let mut url = allowed_url(grants, &request.url)?;
    let mut method = method;
    let mut body = request.body;
    for _ in 0..=MAX_REDIRECTS {
        check_resolved(grants, &url).await?;
        let mut builder = shared
            .http
            .client
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(timeout);
        if let Some(body) = &body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(failed)?;
        // What was actually connected to, in case the name resolved anew in between.
        if let Some(peer) = response.remote_addr()
            && !grants.allows_address(peer.ip(), peer.port())
        {
            return Err(internal_refused(
                url.host_str().unwrap_or_default(),
                peer.ip(),
            ));
        }
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response.headers().get(header::LOCATION)
        {
            let location = location.to_str().map_err(|_| {
                host_error(ErrorKind::Failed, "redirect Location is not valid text")
            })?;
            let next = url.join(location).map_err(|e| {
                host_error(ErrorKind::Failed, format!("invalid redirect Location: {e}"))
            })?;
            let next = allowed_url(grants, next.as_str())?;
            if !same_origin(&url, &next) {
                for name in CREDENTIAL_HEADERS {
                    headers.remove(*name);
                }
            }
            url = next;
            // 303, and 301/302 after a POST, turn into a GET without body (as browsers do).
            if status == reqwest::StatusCode::SEE_OTHER
                || (method == Method::POST && status.as_u16() <= 302)
            {
                method = Method::GET;
                body = None;
            }
            debug!(%url, "following redirect");
            continue;
        }
        return read_response(response, config.max_http_response_bytes).await;
    }
    Err(host_error(
        ErrorKind::Failed,
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

async fn read_response(response: reqwest::Response, max: usize) -> Result<Response, HostError> {
    let too_large = || {
        host_error(
            ErrorKind::LimitExceeded,
            format!("the response body exceeds the host's limit of {max} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

impl Host for HostState {
    #[instrument(level = "debug", skip_all, fields(plugin = %self.plugin, method = %request.method))]
    async fn fetch(&mut self, request: Request) -> wasmtime::Result<Result<Response, HostError>> {
        let grants = self.grants.clone();
        let shared = self.shared.clone();
        Ok(fetch_checked(&grants, &shared, request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(allow: &[&str]) -> Grants {
        let mut grants = Grants::default();
        grants.http.allow = allow.iter().map(|s| s.to_string()).collect();
        grants
    }

    #[test]
    fn urls_are_checked_against_the_allow_list() {
        let g = grants(&["api.example.com", "127.0.0.1:8080"]);
        assert!(allowed_url(&g, "https://api.example.com/v4/projects").is_ok());
        assert!(allowed_url(&g, "http://127.0.0.1:8080/").is_ok());
        let denied = allowed_url(&g, "http://127.0.0.1:8081/").unwrap_err();
        assert_eq!(denied.kind, ErrorKind::Denied);
        assert_eq!(
            allowed_url(&g, "file:///etc/passwd").unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            allowed_url(&g, "https://user:pw@api.example.com/")
                .unwrap_err()
                .kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            allowed_url(&g, "not a url").unwrap_err().kind,
            ErrorKind::Invalid
        );
    }
}
