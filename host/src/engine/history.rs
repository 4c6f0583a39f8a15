//! What clients read of a task's history, once durable: its events, log lines and records,
//! the statistics over tasks, and messages posted to its subscribers.

use super::*;

impl Engine {
    /// A task's events after `after_seq`. Events become visible once durable, a little after
    /// the task's own state can be read; waiting for the writes made before the call keeps a
    /// reader who saw the task in some state from missing the events that led to it.
    pub async fn events(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        self.load(principal, id).await?;
        self.inner.storage.sync().await?;
        Ok(self
            .inner
            .storage
            .events(Some(id), after_seq, limit)
            .await?)
    }

    /// A task's log lines after `after_seq`, once the writes made before the call are
    /// durable (as for [`events`](Self::events)).
    pub async fn logs(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Task, Vec<LogEntry>), EngineError> {
        self.inner.storage.sync().await?;
        self.visible_logs(principal, id, after_seq, limit).await
    }

    /// The log lines visible now, without waiting: for followers, which then take the rest
    /// from the live feed.
    pub async fn visible_logs(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Task, Vec<LogEntry>), EngineError> {
        let task = self.load(principal, id).await?;
        let logs = self.inner.storage.logs(id, after_seq, limit).await?;
        Ok((task, logs))
    }

    /// The last `lines` log lines of a task `principal` may read, oldest first.
    pub async fn log_tail(
        &self,
        principal: &Principal,
        id: &str,
        lines: usize,
    ) -> Result<(Task, Vec<LogEntry>), EngineError> {
        self.inner.storage.sync().await?;
        let task = self.load(principal, id).await?;
        let tail = self.inner.storage.log_tail(id, lines).await?;
        Ok((task, tail))
    }

    pub async fn records(
        &self,
        principal: &Principal,
        id: &str,
        collection: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Record>, u64), EngineError> {
        self.load(principal, id).await?;
        Ok(self
            .inner
            .storage
            .records(id, collection, limit, offset)
            .await?)
    }

    /// Sends a message to the task's stream subscribers (stored as a `message` event).
    pub async fn post_message(
        &self,
        principal: &Principal,
        id: &str,
        kind: &str,
        data: Value,
    ) -> Result<Event, EngineError> {
        let task = self.load(principal, id).await?;
        if !policy::may_control(principal, &task) && !policy::may_report(principal, &task) {
            return Err(EngineError::Forbidden(format!(
                "{} may not message task {id}",
                principal.name
            )));
        }
        if kind.is_empty() || kind.len() > 64 {
            return Err(EngineError::validation(
                "message type must be 1-64 characters",
            ));
        }
        let events = self
            .inner
            .storage
            .append_events(
                &task,
                &[EventData::Message {
                    message_type: kind.to_owned(),
                    data,
                }],
            )
            .await?;
        events
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Storage(StorageError::Backend("no event stored".into())))
    }

    pub async fn stats(
        &self,
        principal: &Principal,
        query: StatsQuery,
    ) -> Result<Stats, EngineError> {
        if query.group_by.len() > stats::MAX_GROUP_BY {
            return Err(EngineError::validation(format!(
                "group_by takes at most {} labels",
                stats::MAX_GROUP_BY
            )));
        }
        if query.recent > stats::MAX_RECENT {
            return Err(EngineError::validation(format!(
                "recent is at most {}",
                stats::MAX_RECENT
            )));
        }
        stats::compute(
            self.inner.storage.as_ref(),
            &query,
            &policy::read_scope(principal),
        )
        .await
    }

    /// A page of the projects (values of the `project` label) whose tasks `principal` may
    /// read, and how many there are.
    pub async fn projects(
        &self,
        principal: &Principal,
        query: &ProjectQuery,
    ) -> Result<(Vec<Project>, u64), EngineError> {
        projects::list(
            self.inner.storage.as_ref(),
            query,
            &policy::read_scope(principal),
        )
        .await
    }
}
