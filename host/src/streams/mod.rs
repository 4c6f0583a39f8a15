//! Live event streams, apart from any transport.
//!
//! The hub takes every stored event (from storage's broadcast, in `seq` order) and every
//! system notice, finds the connections whose topics match through an index, checks that each
//! may read the event, and puts it in their bounded queues without ever waiting: a connection
//! whose queue is full is closed as too slow, so no subscriber can hold up the workers or the
//! other subscribers. It can come back with `after_seq`.
//!
//! A [`StreamConnection`] is one client's side: its subscriptions, the [`Replay`] of stored
//! events when it resumes, and the seam between replay and live events. Each subscription
//! remembers the `seq` up to which the replay (or the moment of subscribing) covered it; a
//! live event is delivered only past that point, and a replayed event only if no other
//! subscription of the connection delivers it live. So nothing is lost at the seam and
//! nothing arrives twice.

mod topic;
mod traffic;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, warn};

pub use topic::Topic;
pub use traffic::{StreamStats, Traffic};

use crate::auth::Principal;
use crate::engine::{Engine, EngineError, EventFeed};
use crate::lock;
use crate::model::{Event, SystemNotice, Task};

/// Stream settings (`[streams]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// How often the server pings; a peer silent for two intervals is dropped.
    pub heartbeat_interval_ms: u64,
    /// Frames waiting for one connection before it is closed as too slow.
    pub buffer_frames: usize,
    /// Open stream connections per principal.
    pub max_connections_per_principal: usize,
    /// Open stream connections in all.
    pub max_connections: usize,
    /// Topics one connection may subscribe to.
    pub max_topics: usize,
    /// Events a resume may scan on topics other than a single task's (those use the task's
    /// own index and have no limit).
    pub max_replay_events: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 30_000,
            buffer_frames: 1024,
            max_connections_per_principal: 32,
            max_connections: 10_000,
            max_topics: 100,
            max_replay_events: 100_000,
        }
    }
}

impl StreamConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms < 50 {
            return Err("streams.heartbeat_interval_ms must be at least 50".into());
        }
        if self.buffer_frames < 8 {
            return Err("streams.buffer_frames must be at least 8".into());
        }
        if self.max_connections_per_principal == 0 || self.max_connections == 0 {
            return Err("streams connection limits must be at least 1".into());
        }
        if self.max_topics == 0 {
            return Err("streams.max_topics must be at least 1".into());
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    InvalidTopic(String),
    #[error("a connection may subscribe to at most {0} topics")]
    TooManyTopics(usize),
    #[error(
        "resuming from after_seq={after_seq} would scan {backlog} events, over the limit of \
         {limit}; read GET /api/v1/tasks/{{id}}/events first, or resume one task topic at a time"
    )]
    ReplayTooLong {
        after_seq: u64,
        backlog: u64,
        limit: u64,
    },
    #[error("{principal} already has {limit} stream connections open")]
    TooManyConnections { principal: String, limit: usize },
    #[error("the host has {0} stream connections open, its limit")]
    HostFull(usize),
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Why the hub ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue was full: it read more slowly than events arrived.
    SlowConsumer,
    /// The host is shutting down.
    Shutdown,
}

/// What a connection should send next.
#[derive(Debug)]
pub enum Next {
    /// A frame (JSON text) and, for task events, its `seq`.
    Frame {
        text: Arc<str>,
        seq: Option<u64>,
    },
    Closed(CloseReason),
}

/// A stored event with its JSON frame, serialised once for every subscriber.
struct LiveEvent {
    event: Event,
    frame: Arc<str>,
}

enum Delivery {
    Event(Arc<LiveEvent>),
    System(Arc<str>),
}

/// The stream hub. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    hub: Arc<Hub>,
}

struct Hub {
    engine: Engine,
    config: StreamConfig,
    state: Mutex<HubState>,
    next_id: AtomicU64,
    slow_consumers_dropped: AtomicU64,
    /// Frames of every connection since start.
    traffic: Traffic,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct HubState {
    connections: HashMap<u64, Subscriber>,
    per_principal: HashMap<String, usize>,
    index: TopicIndex,
    shutting_down: bool,
}

struct Subscriber {
    principal: Principal,
    /// Gone once the hub has let the connection go (too slow, or shutdown).
    queue: Option<mpsc::Sender<Delivery>>,
    close: Option<oneshot::Sender<CloseReason>>,
    topics: HashSet<Topic>,
    traffic: Arc<Traffic>,
}

/// Connection ids by topic, so that an event reaches its subscribers without a look at the
/// others.
#[derive(Default)]
struct TopicIndex {
    tasks: HashMap<String, HashSet<u64>>,
    plugins: HashMap<String, HashSet<u64>>,
    labels: HashMap<String, HashMap<String, HashSet<u64>>>,
    all_tasks: HashSet<u64>,
    system: HashSet<u64>,
}

impl TopicIndex {
    fn insert(&mut self, topic: &Topic, id: u64) {
        match topic {
            Topic::Task(task) => self.tasks.entry(task.clone()).or_default().insert(id),
            Topic::Plugin(name) => self.plugins.entry(name.clone()).or_default().insert(id),
            Topic::Label(key, value) => self
                .labels
                .entry(key.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(id),
            Topic::Tasks => self.all_tasks.insert(id),
            Topic::System => self.system.insert(id),
        };
    }

    fn remove(&mut self, topic: &Topic, id: u64) {
        fn take(map: &mut HashMap<String, HashSet<u64>>, key: &str, id: u64) {
            if let Some(ids) = map.get_mut(key) {
                ids.remove(&id);
                if ids.is_empty() {
                    map.remove(key);
                }
            }
        }
        match topic {
            Topic::Task(task) => take(&mut self.tasks, task, id),
            Topic::Plugin(name) => take(&mut self.plugins, name, id),
            Topic::Label(key, value) => {
                if let Some(values) = self.labels.get_mut(key) {
                    take(values, value, id);
                    if values.is_empty() {
                        self.labels.remove(key);
                    }
                }
            }
            Topic::Tasks => {
                self.all_tasks.remove(&id);
            }
            Topic::System => {
                self.system.remove(&id);
            }
        }
    }

    /// Connections subscribed to any topic `event` is published on, each once.
    fn subscribers_of(&self, event: &Event) -> Vec<u64> {
        let mut ids: Vec<u64> = self.all_tasks.iter().copied().collect();
        ids.extend(self.tasks.get(&event.task_id).into_iter().flatten());
        ids.extend(self.plugins.get(&event.plugin).into_iter().flatten());
        for (key, value) in &event.labels {
            if let Some(ids_of) = self.labels.get(key).and_then(|values| values.get(value)) {
                ids.extend(ids_of);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl Streams {
    /// Starts the hub: from now on every stored event and system notice is delivered.
    pub fn start(engine: Engine, config: StreamConfig) -> Self {
        // Subscribed before anything else, so that nothing published from here on is missed.
        let events = engine.event_feed().subscribe();
        let notices = engine.system_notices();
        let (stop, stopped) = watch::channel(false);
        let hub = Arc::new(Hub {
            engine,
            config,
            state: Mutex::new(HubState::default()),
            next_id: AtomicU64::new(1),
            slow_consumers_dropped: AtomicU64::new(0),
            traffic: Traffic::default(),
            stop,
        });
        tokio::spawn(hub.clone().dispatch(events, notices, stopped));
        Self { hub }
    }

    pub fn config(&self) -> &StreamConfig {
        &self.hub.config
    }

    /// Opens a connection for `principal`, within the connection limits.
    pub fn connect(&self, principal: Principal) -> Result<StreamConnection, StreamError> {
        let mut state = lock(&self.hub.state);
        if state.shutting_down {
            return Err(StreamError::ShuttingDown);
        }
        if state.connections.len() >= self.hub.config.max_connections {
            return Err(StreamError::HostFull(self.hub.config.max_connections));
        }
        let limit = self.hub.config.max_connections_per_principal;
        let open = state
            .per_principal
            .entry(principal.name.clone())
            .or_default();
        if *open >= limit {
            return Err(StreamError::TooManyConnections {
                principal: principal.name,
                limit,
            });
        }
        *open += 1;
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, queue) = mpsc::channel(self.hub.config.buffer_frames);
        let (close_sender, close) = oneshot::channel();
        let traffic = Arc::new(Traffic::default());
        state.connections.insert(
            id,
            Subscriber {
                principal: principal.clone(),
                queue: Some(sender),
                close: Some(close_sender),
                topics: HashSet::new(),
                traffic: traffic.clone(),
            },
        );
        Ok(StreamConnection {
            id,
            connection_id: uuid::Uuid::now_v7().to_string(),
            hub: self.hub.clone(),
            principal,
            queue,
            close,
            closed: None,
            subscriptions: BTreeMap::new(),
            traffic,
        })
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        lock(&self.hub.state).connections.len()
    }

    /// Connections closed so far because they read too slowly.
    pub fn slow_consumers_dropped(&self) -> u64 {
        self.hub.slow_consumers_dropped.load(Ordering::Relaxed)
    }

    /// Delivers what is already published, then ends every connection (`Shutdown`, after its
    /// queue is drained) and refuses new ones.
    pub fn shutdown(&self) {
        let _ = self.hub.stop.send(true);
    }
}

impl Hub {
    async fn dispatch(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Event>,
        mut notices: broadcast::Receiver<SystemNotice>,
        mut stop: watch::Receiver<bool>,
    ) {
        let feed = self.engine.event_feed();
        // Events up to here were published before we subscribed or are in the receiver twice.
        let mut last = feed.last_seq();
        let mut notices_open = true;
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) if event.seq > last => {
                        last = event.seq;
                        self.deliver_event(event);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        debug!(missed, "stream hub fell behind the live feed; catching up from storage");
                        last = self.catch_up(&feed, last).await;
                    }
                    Err(RecvError::Closed) => break,
                },
                notice = notices.recv(), if notices_open => match notice {
                    Ok(notice) => self.deliver_system(&notice),
                    Err(RecvError::Lagged(missed)) => warn!(missed, "system notices were dropped"),
                    Err(RecvError::Closed) => notices_open = false,
                },
                _ = stop.changed() => break,
            }
        }
        // What was published before the stop still goes out, then every queue is closed.
        while let Ok(event) = events.try_recv() {
            if event.seq > last {
                last = event.seq;
                self.deliver_event(event);
            }
        }
        while let Ok(notice) = notices.try_recv() {
            self.deliver_system(&notice);
        }
        let mut state = lock(&self.state);
        state.shutting_down = true;
        state.index = TopicIndex::default();
        for subscriber in state.connections.values_mut() {
            subscriber.queue = None;
            subscriber.topics.clear();
        }
    }

    /// Delivers the stored events after `last` that the live feed skipped; returns the new
    /// last seq delivered.
    async fn catch_up(&self, feed: &EventFeed, mut last: u64) -> u64 {
        const PAGE: usize = 1000;
        loop {
            let page = match feed.stored(None, last, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    warn!(error = %e, after_seq = last, "stream hub could not read missed events; subscribers can resume with after_seq");
                    return feed.last_seq().max(last);
                }
            };
            let full = page.len() == PAGE;
            for event in page {
                last = event.seq;
                self.deliver_event(event);
            }
            if !full {
                return last;
            }
        }
    }

    fn deliver_event(&self, event: Event) {
        let targets = lock(&self.state).index.subscribers_of(&event);
        // Most events have no subscriber: do not pay for their frame.
        if targets.is_empty() {
            return;
        }
        let live = Arc::new(LiveEvent {
            frame: event.to_api().to_string().into(),
            event,
        });
        let mut state = lock(&self.state);
        let mut too_slow = Vec::new();
        for id in targets {
            let Some(subscriber) = state.connections.get(&id) else {
                continue;
            };
            if !crate::policy::may_read_event(&subscriber.principal, &live.event) {
                continue;
            }
            if let Some(queue) = &subscriber.queue
                && let Err(TrySendError::Full(_)) = queue.try_send(Delivery::Event(live.clone()))
            {
                too_slow.push(id);
            }
        }
        for id in too_slow {
            self.drop_slow(&mut state, id);
        }
    }

    fn deliver_system(&self, notice: &SystemNotice) {
        let frame: Arc<str> = notice.to_api().to_string().into();
        let mut state = lock(&self.state);
        let mut too_slow = Vec::new();
        for id in &state.index.system {
            if let Some(queue) = state.connections.get(id).and_then(|s| s.queue.as_ref())
                && let Err(TrySendError::Full(_)) = queue.try_send(Delivery::System(frame.clone()))
            {
                too_slow.push(*id);
            }
        }
        for id in too_slow {
            self.drop_slow(&mut state, id);
        }
    }

    /// Lets a connection go that cannot keep up; it is told at once, not after its queue.
    fn drop_slow(&self, state: &mut HubState, id: u64) {
        let Some(subscriber) = state.connections.get_mut(&id) else {
            return;
        };
        subscriber.queue = None;
        if let Some(close) = subscriber.close.take() {
            let _ = close.send(CloseReason::SlowConsumer);
        }
        let topics: Vec<Topic> = subscriber.topics.drain().collect();
        for topic in &topics {
            state.index.remove(topic, id);
        }
        self.slow_consumers_dropped.fetch_add(1, Ordering::Relaxed);
        debug!(connection = id, "stream subscriber too slow; closed");
    }
}

/// One client's stream: open until dropped.
pub struct StreamConnection {
    id: u64,
    connection_id: String,
    hub: Arc<Hub>,
    principal: Principal,
    queue: mpsc::Receiver<Delivery>,
    close: oneshot::Receiver<CloseReason>,
    closed: Option<CloseReason>,
    /// Topic → the seq through which this subscription is already covered.
    subscriptions: BTreeMap<Topic, u64>,
    traffic: Arc<Traffic>,
}

impl StreamConnection {
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Counts a frame the transport sent to the client.
    pub fn count_sent(&self) {
        self.traffic.count_sent();
        self.hub.traffic.count_sent();
    }

    /// Counts a frame the transport received from the client.
    pub fn count_received(&self) {
        self.traffic.count_received();
        self.hub.traffic.count_received();
    }

    /// The topics subscribed to now.
    pub fn topics(&self) -> Vec<String> {
        self.subscriptions.keys().map(Topic::to_string).collect()
    }

    /// Subscribes to `topics`. Live events flow from the moment this returns; with
    /// `after_seq`, the returned [`Replay`] yields the stored events after it first (send them
    /// before the next [`next`](Self::next) frame).
    pub async fn subscribe(
        &mut self,
        topics: &[String],
        after_seq: Option<u64>,
    ) -> Result<Replay, StreamError> {
        let mut parsed = Vec::new();
        for text in topics {
            let topic = Topic::parse(text).map_err(StreamError::InvalidTopic)?;
            if !parsed.contains(&topic) {
                parsed.push(topic);
            }
        }
        let added = parsed
            .iter()
            .filter(|t| !self.subscriptions.contains_key(t))
            .count();
        if self.subscriptions.len() + added > self.hub.config.max_topics {
            return Err(StreamError::TooManyTopics(self.hub.config.max_topics));
        }
        for topic in &parsed {
            if let Topic::Task(id) = topic {
                // Not found unless the caller may read it, like every other task route.
                self.hub.engine.get(&self.principal, id).await?;
            }
        }
        let feed = self.hub.engine.event_feed();
        let single_task = match parsed.as_slice() {
            [Topic::Task(id)] => Some(id.clone()),
            _ => None,
        };
        if let Some(after_seq) = after_seq
            && single_task.is_none()
        {
            let backlog = feed.last_seq().saturating_sub(after_seq);
            if backlog > self.hub.config.max_replay_events {
                return Err(StreamError::ReplayTooLong {
                    after_seq,
                    backlog,
                    limit: self.hub.config.max_replay_events,
                });
            }
        }
        {
            let mut state = lock(&self.hub.state);
            let HubState {
                connections, index, ..
            } = &mut *state;
            if let Some(subscriber) = connections.get_mut(&self.id)
                && subscriber.queue.is_some()
            {
                for topic in &parsed {
                    if subscriber.topics.insert(topic.clone()) {
                        index.insert(topic, self.id);
                    }
                }
            }
        }
        // Read after registering: every event past `until` reaches the queue, every event up
        // to it is in storage.
        let until = feed.last_seq();
        let covered = until.max(after_seq.unwrap_or(0));
        for topic in &parsed {
            self.subscriptions.entry(topic.clone()).or_insert(covered);
        }
        let topics: Vec<Topic> = parsed.into_iter().filter(|t| *t != Topic::System).collect();
        let after = after_seq.unwrap_or(until);
        Ok(Replay {
            feed,
            principal: self.principal.clone(),
            done: topics.is_empty() || after >= until,
            topics,
            single_task,
            cursor: after,
            until,
            live: self
                .subscriptions
                .iter()
                .map(|(t, covered)| (t.clone(), *covered))
                .collect(),
        })
    }

    /// Ends the subscriptions to `topics`; ones not subscribed are ignored.
    pub fn unsubscribe(&mut self, topics: &[String]) -> Result<Vec<String>, StreamError> {
        let parsed = topics
            .iter()
            .map(|t| Topic::parse(t).map_err(StreamError::InvalidTopic))
            .collect::<Result<Vec<_>, _>>()?;
        let mut removed = Vec::new();
        let mut state = lock(&self.hub.state);
        let HubState {
            connections, index, ..
        } = &mut *state;
        for topic in parsed {
            if self.subscriptions.remove(&topic).is_some() {
                if let Some(subscriber) = connections.get_mut(&self.id)
                    && subscriber.topics.remove(&topic)
                {
                    index.remove(&topic, self.id);
                }
                removed.push(topic.to_string());
            }
        }
        Ok(removed)
    }

    /// Applies what the credentials grant now (a role changed since the connection opened),
    /// to every event from here on.
    pub fn refresh_principal(&mut self, principal: Principal) {
        if principal == self.principal {
            return;
        }
        if let Some(subscriber) = lock(&self.hub.state).connections.get_mut(&self.id) {
            subscriber.principal = principal.clone();
        }
        self.principal = principal;
    }

    /// The current state of a task this connection may read.
    pub async fn task(&self, id: &str) -> Result<Task, StreamError> {
        Ok(self.hub.engine.get(&self.principal, id).await?)
    }

    /// The next frame to send, or why the stream ended. Cancel-safe.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(reason) = self.closed {
                return Next::Closed(reason);
            }
            tokio::select! {
                biased;
                reason = &mut self.close => {
                    self.closed = Some(reason.unwrap_or(CloseReason::Shutdown));
                }
                delivery = self.queue.recv() => match delivery {
                    // The hub let go after shutdown, and the queue is drained.
                    None => self.closed = Some(CloseReason::Shutdown),
                    Some(Delivery::System(text)) => {
                        if self.subscriptions.contains_key(&Topic::System) {
                            return Next::Frame { text, seq: None };
                        }
                    }
                    Some(Delivery::Event(live)) => {
                        if self.wants_live(&live.event) {
                            return Next::Frame { text: live.frame.clone(), seq: Some(live.event.seq) };
                        }
                    }
                },
            }
        }
    }

    /// Resolves when the hub closes this connection as too slow (for use while a write is
    /// pending). Cancel-safe.
    pub async fn closed_by_hub(&mut self) -> CloseReason {
        if let Some(reason) = self.closed {
            return reason;
        }
        let reason = (&mut self.close).await.unwrap_or(CloseReason::Shutdown);
        self.closed = Some(reason);
        reason
    }

    /// A live event is sent when a subscription it matches has not covered it yet (the hub
    /// already checked that this principal may read it).
    fn wants_live(&self, event: &Event) -> bool {
        self.subscriptions
            .iter()
            .any(|(topic, covered)| event.seq > *covered && topic.matches(event))
    }
}

impl Drop for StreamConnection {
    fn drop(&mut self) {
        let mut state = lock(&self.hub.state);
        if let Some(subscriber) = state.connections.remove(&self.id) {
            for topic in &subscriber.topics {
                state.index.remove(topic, self.id);
            }
        }
        let name = &self.principal.name;
        if let Some(open) = state.per_principal.get_mut(name) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.per_principal.remove(name);
            }
        }
    }
}

/// The stored events a resuming subscription missed, read page by page.
pub struct Replay {
    feed: EventFeed,
    principal: Principal,
    topics: Vec<Topic>,
    /// Read through the task's own index when the replay is of one task.
    single_task: Option<String>,
    cursor: u64,
    until: u64,
    /// Every subscription of the connection with the seq it covers: events they deliver
    /// live are not replayed.
    live: Vec<(Topic, u64)>,
    done: bool,
}

const REPLAY_PAGE: usize = 500;

/// A replayed event: its JSON frame and its seq.
pub struct StoredFrame {
    pub text: Arc<str>,
    pub seq: u64,
}

impl Replay {
    /// The seq the replay ends at; live frames follow it.
    pub fn until(&self) -> u64 {
        self.until
    }

    /// The next page of frames, or `None` at the end.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StoredFrame>>, StreamError> {
        while !self.done {
            let page = self
                .feed
                .stored(self.single_task.as_deref(), self.cursor, REPLAY_PAGE)
                .await?;
            if page.len() < REPLAY_PAGE {
                self.done = true;
            }
            let mut frames = Vec::new();
            for event in page {
                if event.seq > self.until {
                    self.done = true;
                    break;
                }
                self.cursor = event.seq;
                if self.wants(&event) {
                    frames.push(StoredFrame {
                        text: event.to_api().to_string().into(),
                        seq: event.seq,
                    });
                }
            }
            if !frames.is_empty() {
                return Ok(Some(frames));
            }
        }
        Ok(None)
    }

    fn wants(&self, event: &Event) -> bool {
        crate::policy::may_read_event(&self.principal, event)
            && self.topics.iter().any(|t| t.matches(event))
            && !self
                .live
                .iter()
                .any(|(topic, covered)| event.seq > *covered && topic.matches(event))
    }
}
