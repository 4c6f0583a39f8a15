//! WebSocket streams: `GET /api/v1/ws` (subscribe to topics) and `GET /api/v1/tasks/{id}/ws`
//! (one task, opened with its current state). This file is the wire protocol only — client
//! frames in; event, control and close frames out; heartbeats — over a
//! [`StreamConnection`], which owns subscriptions, replay and backpressure.
//!
//! Close codes: 1000 normal; 1001 the host is shutting down; 4001 the credentials expired or
//! were revoked; 4008 the client read too slowly and its buffer filled. The close reason of
//! 1001 and 4008 names the `after_seq` to resume from.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};

use super::ratelimit::Class;
use super::{ApiError, AppState, Credentials, Query, check_rate, raw_query, respond};
use crate::streams::{CloseReason, Next, Replay, StreamConnection, StreamError};

/// Largest client frame; clients only send small control frames.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Subscribe {
        topics: Vec<String>,
        after_seq: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Ping,
}

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::InvalidTopic(_)
            | StreamError::TooManyTopics(_)
            | StreamError::ReplayTooLong { .. } => ApiError::validation(error.to_string()),
            StreamError::TooManyConnections { .. } | StreamError::HostFull(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                error.to_string(),
            )
            .with_details(json!({"limit": "stream_connections"}))
            .retry_after(5),
            StreamError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                error.to_string(),
            ),
            StreamError::Engine(e) => e.into(),
        }
    }
}

/// The upgrade, when the request asks for one.
fn upgrade() -> impl Filter<Extract = (Option<Ws>,), Error = std::convert::Infallible> + Clone {
    warp::ws().map(Some).or(warp::any().map(|| None)).unify()
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let with_state = warp::any().map(move || state.clone());
    let credentials = warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-api-key"))
        .and(raw_query());
    let hub = warp::path!("ws")
        .and(warp::get())
        .and(credentials.clone())
        .and(upgrade())
        .and(with_state.clone())
        .then(
            |authorization, api_key, raw: String, ws: Option<Ws>, state: AppState| async move {
                let credentials = Credentials::from_request(authorization, api_key, &raw);
                respond(open_hub(state, credentials, &raw, ws).await)
            },
        );
    let task =
        warp::path!("tasks" / String / "ws")
            .and(warp::get())
            .and(credentials)
            .and(upgrade())
            .and(with_state)
            .then(
                |id: String,
                 authorization,
                 api_key,
                 raw: String,
                 ws: Option<Ws>,
                 state: AppState| async move {
                    let credentials = Credentials::from_request(authorization, api_key, &raw);
                    respond(open_task(state, credentials, &id, &raw, ws).await)
                },
            );
    hub.or(task).unify().boxed()
}

/// Authenticates, checks the query and the upgrade, and takes a connection slot.
async fn admit(
    state: &AppState,
    credentials: &Credentials,
    raw: &str,
    known: &[&str],
    ws: Option<Ws>,
) -> Result<(Query, Ws, StreamConnection), ApiError> {
    let principal = credentials.authenticate(state).await?;
    check_rate(&state.limits, Class::Principal, &principal.name)?;
    let query = Query::parse(raw, known, false)?;
    let ws = ws.ok_or_else(|| {
        ApiError::validation(
            "this route is a WebSocket stream: send GET with `Connection: Upgrade` and \
             `Upgrade: websocket`",
        )
    })?;
    let connection = state.streams.connect(principal)?;
    Ok((query, ws, connection))
}

async fn open_hub(
    state: AppState,
    credentials: Credentials,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, ApiError> {
    let (_, ws, connection) = admit(&state, &credentials, raw, &["token", "api_key"], ws).await?;
    let hello = connected_frame(&state, &connection);
    Ok(start_session(
        ws,
        connection,
        hello,
        None,
        state,
        credentials,
    ))
}

/// The first frame of every stream.
fn connected_frame(state: &AppState, connection: &StreamConnection) -> Value {
    json!({
        "type": "connected",
        "connection_id": connection.connection_id(),
        "heartbeat_interval_ms": state.streams.config().heartbeat_interval_ms,
        "server_time": crate::model::timestamp::format(&chrono::Utc::now()),
    })
}

/// Finishes the upgrade and runs the session on the upgraded connection.
fn start_session(
    ws: Ws,
    connection: StreamConnection,
    hello: Value,
    replay: Option<Replay>,
    state: AppState,
    credentials: Credentials,
) -> Response {
    use warp::Reply;
    ws.max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| {
            session(
                socket,
                connection,
                vec![hello],
                replay,
                state,
                credentials,
                None,
            )
        })
        .into_response()
}

/// A stream of one task: subscribed before the task is read, so the state in the `connected`
/// frame reflects every event through its `seq` and the frames that follow come after it.
async fn open_task(
    state: AppState,
    credentials: Credentials,
    id: &str,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, ApiError> {
    let (query, ws, mut connection) = admit(
        &state,
        &credentials,
        raw,
        &["token", "api_key", "after_seq"],
        ws,
    )
    .await?;
    let after_seq = query
        .get("after_seq")
        .map(|_| query.u64_in("after_seq", 0, u64::MAX, 0))
        .transpose()?;
    let replay = connection
        .subscribe(&[format!("task:{id}")], after_seq)
        .await?;
    let task = connection.task(id).await?;
    let mut hello = connected_frame(&state, &connection);
    hello["topics"] = json!(connection.topics());
    hello["seq"] = json!(replay.until());
    hello["task"] = task.to_api();
    Ok(start_session(
        ws,
        connection,
        hello,
        Some(replay),
        state,
        credentials,
    ))
}

/// A stream that speaks another system's protocol (a compatibility façade): it rewrites each
/// frame of the hub, or drops it, and takes no frames from the client.
pub trait Dialect: Send + 'static {
    fn translate<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
        frame: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;
}

/// A dialect stream's opening: what it follows, and what it says first once subscribed.
pub trait DialectOpening: Send {
    fn topics(&self) -> Vec<String>;
    /// The frames sent before live ones (a greeting, or the end of a task already finished),
    /// from the connection just subscribed.
    fn first_frames<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Value>, ApiError>> + Send + 'a>>;
}

/// Opens a stream in `dialect` (no replay, none of the host's own frames), with the same
/// admission, limits, heartbeats and credential checks as the host's own streams. `known` are
/// the query parameters the dialect's clients send.
pub async fn open_dialect<D: Dialect + DialectOpening>(
    state: AppState,
    credentials: Credentials,
    raw: &str,
    known: &[&str],
    ws: Option<Ws>,
    mut dialect: D,
) -> Result<Response, ApiError> {
    let (_, ws, mut connection) = admit(&state, &credentials, raw, known, ws).await?;
    connection.subscribe(&dialect.topics(), None).await?;
    let first = dialect.first_frames(&connection).await?;
    use warp::Reply;
    Ok(ws
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| {
            let dialect: Box<dyn Dialect> = Box::new(dialect);
            session(
                socket,
                connection,
                first,
                None,
                state,
                credentials,
                Some(dialect),
            )
        })
        .into_response())
}

/// Why a session ends.
enum Stop {
    /// The peer closed, vanished or stopped answering pings: nothing more can be sent.
    PeerGone,
    /// A close frame goes out with this code and reason.
    Close(u16, String),
}

struct Session {
    sink: SplitSink<WebSocket, Message>,
    connection: StreamConnection,
    /// The highest task-event seq sent, for the resume hint in close reasons.
    last_seq: u64,
    /// How long one write may wait on a peer that does not read.
    write_timeout: Duration,
    buffer_frames: usize,
    dialect: Option<Box<dyn Dialect>>,
}

impl Session {
    async fn write(&mut self, message: Message) -> Result<(), Stop> {
        // Frames count as messages; heartbeats do not.
        let frame = message.is_text();
        tokio::select! {
            biased;
            reason = self.connection.closed_by_hub() => Err(self.close_for(reason)),
            sent = tokio::time::timeout(self.write_timeout, self.sink.send(message)) => match sent {
                Ok(Ok(())) => {
                    if frame {
                        self.connection.count_sent();
                    }
                    Ok(())
                }
                Ok(Err(_)) => Err(Stop::PeerGone),
                // Not read for this long: treat as gone rather than hold a slot forever.
                Err(_) => Err(Stop::PeerGone),
            },
        }
    }

    async fn send_json(&mut self, value: &Value) -> Result<(), Stop> {
        self.write(Message::text(value.to_string())).await
    }

    async fn send_frame(&mut self, text: &str, seq: Option<u64>) -> Result<(), Stop> {
        self.write(Message::text(text)).await?;
        if let Some(seq) = seq {
            self.last_seq = self.last_seq.max(seq);
        }
        Ok(())
    }

    async fn send_error(&mut self, error: ApiError) -> Result<(), Stop> {
        self.send_json(&json!({
            "type": "error",
            "error": {"code": error.code, "message": error.message, "details": error.details},
        }))
        .await
    }

    /// Sends the stored events of a replay; returns how many.
    async fn send_replay(&mut self, replay: &mut Replay) -> Result<usize, Stop> {
        let mut sent = 0;
        loop {
            match replay.next_page().await {
                Ok(Some(frames)) => {
                    for frame in frames {
                        self.send_frame(&frame.text, Some(frame.seq)).await?;
                        sent += 1;
                    }
                }
                Ok(None) => return Ok(sent),
                Err(e) => {
                    self.send_error(e.into()).await?;
                    return Ok(sent);
                }
            }
        }
    }

    fn close_for(&self, reason: CloseReason) -> Stop {
        match reason {
            CloseReason::SlowConsumer => Stop::Close(
                4008,
                format!(
                    "too slow: over {} frames waiting; resume with after_seq={}",
                    self.buffer_frames, self.last_seq
                ),
            ),
            CloseReason::Shutdown => Stop::Close(
                1001,
                format!(
                    "server shutting down; resume with after_seq={}",
                    self.last_seq
                ),
            ),
        }
    }

    async fn handle_client_frame(&mut self, text: &str) -> Result<(), Stop> {
        self.connection.count_received();
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                return self
                    .send_error(ApiError::validation(format!(
                        "invalid frame: {e}; expected {{\"type\": \"subscribe\", \"topics\": [...], \
                         \"after_seq\"?}}, {{\"type\": \"unsubscribe\", \"topics\": [...]}} or \
                         {{\"type\": \"ping\"}}"
                    )))
                    .await;
            }
        };
        match frame {
            ClientFrame::Ping => self.send_json(&json!({"type": "pong"})).await,
            ClientFrame::Subscribe { topics, after_seq } => {
                match self.connection.subscribe(&topics, after_seq).await {
                    Ok(mut replay) => {
                        let replayed = self.send_replay(&mut replay).await?;
                        self.send_json(&json!({
                            "type": "subscribed",
                            "topics": topics,
                            "replayed": replayed,
                            "seq": replay.until(),
                        }))
                        .await
                    }
                    Err(e) => self.send_error(e.into()).await,
                }
            }
            ClientFrame::Unsubscribe { topics } => match self.connection.unsubscribe(&topics) {
                Ok(removed) => {
                    self.send_json(&json!({"type": "unsubscribed", "topics": removed}))
                        .await
                }
                Err(e) => self.send_error(e.into()).await,
            },
        }
    }
}

async fn session(
    socket: WebSocket,
    connection: StreamConnection,
    hello: Vec<Value>,
    replay: Option<Replay>,
    state: AppState,
    credentials: Credentials,
    dialect: Option<Box<dyn Dialect>>,
) {
    let heartbeat = state.streams.config().heartbeat_interval();
    let (sink, mut incoming) = socket.split();
    // The client's frames are read in a task of their own, woken only when the socket has
    // data. Polled afresh from the send loop instead, every attempt would cost a read, and
    // the WebSocket layer zero-fills its 128 KiB read buffer before each read: with a
    // thousand subscribers that was a quarter of the host's CPU.
    let (client_frames_sender, mut client_frames) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        while let Some(message) = incoming.next().await {
            let failed = message.is_err();
            if client_frames_sender.send(message.ok()).await.is_err() || failed {
                break;
            }
        }
    });
    let mut session = Session {
        sink,
        connection,
        last_seq: hello.first().and_then(|h| h["seq"].as_u64()).unwrap_or(0),
        write_timeout: (heartbeat * 2).max(Duration::from_secs(10)),
        buffer_frames: state.streams.config().buffer_frames,
        dialect,
    };
    let stop = run(
        &mut session,
        &mut client_frames,
        hello,
        replay,
        &state,
        &credentials,
    )
    .await;
    if let Stop::Close(code, reason) = stop {
        debug!(connection = session.connection.connection_id(), code, %reason, "closing stream");
        // A peer that stopped reading cannot take a close frame either; do not wait on it.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            session.sink.send(Message::close_with(code, reason)),
        )
        .await;
    }
    reader.abort();
}

async fn run(
    session: &mut Session,
    client_frames: &mut mpsc::Receiver<Option<Message>>,
    hello: Vec<Value>,
    replay: Option<Replay>,
    state: &AppState,
    credentials: &Credentials,
) -> Stop {
    let heartbeat = state.streams.config().heartbeat_interval();
    for frame in &hello {
        if let Err(stop) = session.send_json(frame).await {
            return stop;
        }
    }
    if let Some(mut replay) = replay
        && let Err(stop) = session.send_replay(&mut replay).await
    {
        return stop;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let step = tokio::select! {
            next = session.connection.next() => match next {
                Next::Frame { text, seq } => match session.dialect.as_mut() {
                    None => session.send_frame(&text, seq).await,
                    Some(dialect) => match dialect.translate(&session.connection, &text).await {
                        Some(translated) => session.send_frame(&translated, seq).await,
                        None => Ok(()),
                    },
                },
                Next::Closed(reason) => Err(session.close_for(reason)),
            },
            message = client_frames.recv() => {
                last_heard = Instant::now();
                match message {
                    None | Some(None) => Err(Stop::PeerGone),
                    Some(Some(message)) if message.is_close() => {
                        Err(Stop::Close(1000, String::new()))
                    }
                    // A dialect's clients send nothing the host acts on.
                    Some(Some(message)) if message.is_text() && session.dialect.is_some() => {
                        session.connection.count_received();
                        Ok(())
                    }
                    Some(Some(message)) if message.is_text() => match message.to_str() {
                        Ok(text) => session.handle_client_frame(text).await,
                        Err(()) => Ok(()),
                    },
                    Some(Some(message)) if message.is_binary() => {
                        session
                            .send_error(ApiError::validation("frames are JSON text, not binary"))
                            .await
                    }
                    // Pings are answered by the WebSocket layer; pongs only prove liveness.
                    Some(Some(_)) => Ok(()),
                }
            },
            _ = ticks.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    debug!(connection = session.connection.connection_id(), "peer silent for two heartbeats; dropping");
                    Err(Stop::PeerGone)
                } else {
                    match credentials.authenticate(state).await {
                        Ok(principal) => {
                            session.connection.refresh_principal(principal);
                            session.write(Message::ping(Vec::new())).await
                        }
                        Err(_) => Err(Stop::Close(4001, "credentials expired or revoked".into())),
                    }
                }
            },
        };
        if let Err(stop) = step {
            return stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_unknown_fields_are_refused() {
        let frame: ClientFrame =
            serde_json::from_str(r#"{"type":"subscribe","topics":["tasks"],"after_seq":5}"#)
                .expect("subscribe");
        assert!(matches!(
            frame,
            ClientFrame::Subscribe { after_seq: Some(5), ref topics } if topics == &["tasks"]
        ));
        assert!(matches!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        assert!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"subscribe","topics":[],"x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
    }
}
