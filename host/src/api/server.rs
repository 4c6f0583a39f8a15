//! The server around the routes: accepts connections (capped, with hyper's timers and a
//! first-byte timeout), sets up each request's [`request`](super::request) scope, applies the
//! per-IP limit, CORS and the headers every response carries, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service;
use tracing::{debug, info, warn};
use warp::http::HeaderValue;
use warp::reply::Response;

use super::ratelimit::Class;
use super::{AppState, check_rate, request, routes};

/// Cross-origin requests, for the origins the operator allowed (none by default).
mod cors {
    use warp::http::{HeaderValue, StatusCode};
    use warp::reply::Response;

    pub fn preflight() -> Response {
        let mut response = Response::new(warp::hyper::body::Bytes::new().into());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, x-api-key, x-request-id"),
        );
        headers.insert("access-control-max-age", HeaderValue::from_static("600"));
        response
    }

    pub fn allow(response: &mut Response, origin: &str) {
        if let Ok(origin) = HeaderValue::from_str(origin) {
            let headers = response.headers_mut();
            headers.insert("access-control-allow-origin", origin);
            headers.insert("vary", HeaderValue::from_static("origin"));
            headers.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("x-request-id, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, retry-after"),
            );
        }
    }
}

/// Headers every response carries.
fn secure(response: &mut Response, request_id: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
}

/// A client's request id is echoed when it is short and printable; otherwise one is made.
fn request_id(headers: &warp::http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Health probes and metrics: left out of the per-IP limit, for load balancers and Prometheus.
fn is_probe(path: &str) -> bool {
    path == "/health" || path.starts_with("/health/") || path == "/metrics"
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting and lets
/// requests in flight finish (for up to 10 s).
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    serve_routes(listener, state.clone(), routes(state), shutdown).await
}

/// Serves `routes` (a façade's own listener, or the whole API) as [`serve`] does.
pub async fn serve_routes(
    listener: TcpListener,
    state: AppState,
    routes: warp::filters::BoxedFilter<(Response,)>,
    shutdown: impl Future<Output = ()>,
) {
    let service = warp::service(routes);
    let http = &state.config.http;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper has no timeouts: a client sending half a request line would hold
    // its connection forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(http.header_read_timeout_s.max(1)));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(http.http2_keep_alive_s.max(1)))
        .keep_alive_timeout(Duration::from_secs(http.http2_keep_alive_s.max(1)));
    let connections = Arc::new(tokio::sync::Semaphore::new(http.max_connections.max(1)));
    let first_byte = Duration::from_secs(http.header_read_timeout_s.max(1));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    // A connection still waiting for its first byte holds up the drain below: it is told.
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // At the cap: closing at once keeps descriptors for the clients already served.
            debug!(%peer, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let service = service.clone();
        let state = state.clone();
        let handler =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut service = service.clone();
                let state = state.clone();
                state.http_requests.fetch_add(1, Ordering::Relaxed);
                let forwarded_for = request
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok());
                let info = Arc::new(request::RequestInfo {
                    id: request_id(request.headers()),
                    method: request.method().to_string(),
                    path: request.uri().path().to_owned(),
                    peer: state.config.http.client_address(peer.ip(), forwarded_for),
                    rate: std::sync::Mutex::new(None),
                });
                let origin = request
                    .headers()
                    .get("origin")
                    .and_then(|o| o.to_str().ok())
                    .map(str::to_owned);
                let preflight = request.method() == hyper::Method::OPTIONS
                    && request
                        .headers()
                        .contains_key("access-control-request-method");
                async move {
                    let is_api = !is_probe(&info.path);
                    let allowed_origin = origin.filter(|o| state.config.cors.allows(o));
                    let mut response = request::scope(info.clone(), async {
                        if preflight && allowed_origin.is_some() {
                            return Ok(cors::preflight());
                        }
                        if is_api
                            && let Err(refused) =
                                check_rate(&state.limits, Class::Ip, &info.peer.to_string())
                        {
                            return Ok(refused.into_response());
                        }
                        service.call(request).await
                    })
                    .await?;
                    secure(&mut response, &info.id);
                    if let Some(origin) = &allowed_origin {
                        cors::allow(&mut response, origin);
                    }
                    let rate = *info.rate.lock().unwrap_or_else(|p| p.into_inner());
                    if is_api && let Some(rate) = rate {
                        let headers = response.headers_mut();
                        headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
                        headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
                        headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset_s));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut closing_seen = closing_seen.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // hyper's header timer starts only once it knows the protocol, which takes a first
            // byte: a client that never sends one is dropped here, or at shutdown.
            let mut first = [0u8; 1];
            let first_sent = tokio::select! {
                peeked = tokio::time::timeout(first_byte, stream.peek(&mut first)) => peeked.is_ok(),
                _ = closing_seen.wait_for(|closing| *closing) => false,
            };
            if !first_sent {
                debug!(%peer, "connection closed: nothing sent");
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), handler);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("no longer accepting connections");
    closing.send_replace(true);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after 10 s; closing them");
    }
}
