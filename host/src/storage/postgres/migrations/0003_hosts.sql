-- taskhost on PostgreSQL, schema 3: the hosts sharing the database, each refreshing its row
-- while it runs, so that any host can say which others are alive.

CREATE TABLE hosts (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);
CREATE INDEX hosts_by_last_seen ON hosts (last_seen);
