-- taskhost on PostgreSQL, schema 1: tasks with their leases, events in commit order, logs,
-- records, plugin key-value data, paused queues, users and API keys.
--
-- What the engine owns whole (a task, an event, a log line, a record) is stored as the host's
-- encoded bytes (storage::codec, the same encoding as on sled) in `body`; the columns beside
-- it are only what the database filters, sorts, counts and claims on.

CREATE TABLE tasks (
    id            text PRIMARY KEY,
    plugin        text NOT NULL,
    owner         text NOT NULL,
    status        text NOT NULL CHECK (status IN
                      ('queued', 'scheduled', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    priority      integer NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    scheduled_at  timestamptz,
    labels        jsonb NOT NULL DEFAULT '{}',
    body          bytea NOT NULL,
    -- The lease of a running task: the host that runs it, until when, and the fencing token
    -- that every write of that run carries (a write with an older token is refused).
    lease_host    text,
    lease_expires timestamptz,
    lease_token   bigint NOT NULL DEFAULT 0
);

-- Listings walk one status (or all) in creation order, optionally of one plugin or owner.
CREATE INDEX tasks_by_status ON tasks (status, created_at, id);
CREATE INDEX tasks_by_plugin ON tasks (plugin, status, created_at, id);
CREATE INDEX tasks_by_owner ON tasks (owner, status, created_at, id);
CREATE INDEX tasks_by_label ON tasks USING gin (labels jsonb_path_ops);
-- Dispatch claims the best ready task of a plugin; the sweeper finds due and lapsed ones.
CREATE INDEX tasks_ready ON tasks (plugin, priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX tasks_due ON tasks (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX tasks_leased ON tasks (lease_expires) WHERE status = 'running';

-- Per plugin and status, kept in the transaction of each task write so that counts need no scan.
CREATE TABLE task_counts (
    plugin text NOT NULL,
    status text NOT NULL,
    n      bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (plugin, status)
);

-- One row holding the last event seq given. A writer takes its seqs with UPDATE … RETURNING
-- inside its transaction; the row lock it holds until commit makes seqs commit in the order
-- they were given, so a reader that sees seq N can never later see a smaller one appear.
-- (A sequence object would not: nextval is not transactional, values commit out of order.)
CREATE TABLE event_seq (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last      bigint NOT NULL
);
INSERT INTO event_seq (last) VALUES (0);

CREATE TABLE events (
    seq     bigint PRIMARY KEY,
    task_id text NOT NULL,
    body    bytea NOT NULL
);
CREATE INDEX events_by_task ON events (task_id, seq);

CREATE TABLE task_logs (
    task_id text NOT NULL,
    seq     bigint NOT NULL,
    body    bytea NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE records (
    task_id    text NOT NULL,
    collection text NOT NULL,
    key        text NOT NULL,
    body       bytea NOT NULL,
    PRIMARY KEY (task_id, collection, key)
);

CREATE TABLE plugin_kv (
    plugin text NOT NULL,
    key    text NOT NULL,
    value  bytea NOT NULL,
    PRIMARY KEY (plugin, key)
);

CREATE TABLE paused_queues (
    plugin text PRIMARY KEY
);

CREATE TABLE users (
    username text PRIMARY KEY,
    body     jsonb NOT NULL
);

CREATE TABLE api_keys (
    id    text PRIMARY KEY,
    owner text NOT NULL,
    body  jsonb NOT NULL
);
CREATE INDEX api_keys_by_owner ON api_keys (owner);
