-- taskhost on PostgreSQL, schema 6: runner registrations and the jobs handed to them, so that
-- they outlive a host restart and every host serves every runner.

CREATE TABLE runners (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    labels        text[] NOT NULL,
    capacity      integer NOT NULL,
    owner         text NOT NULL,
    token_hash    text NOT NULL UNIQUE,
    registered_at timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL
);

CREATE TABLE runner_jobs (
    id               text PRIMARY KEY,
    task_id          text NOT NULL,
    -- The run (one start of the task) that dispatched or adopted the job.
    run              text NOT NULL,
    labels           text[] NOT NULL,
    digest           text NOT NULL,
    -- The spec and the dispatching run's secrets, sealed with the hosts' secrets key.
    sealed           text NOT NULL,
    status           text NOT NULL,
    runner_id        text,
    lease_until      timestamptz,
    deliveries       integer NOT NULL,
    steps            jsonb NOT NULL,
    artifacts        jsonb NOT NULL,
    cancel_requested boolean NOT NULL,
    -- The run that dispatched or adopted the job ended and took its outcome.
    collected        boolean NOT NULL
);
CREATE INDEX runner_jobs_queued ON runner_jobs (id) WHERE status = 'queued';
CREATE INDEX runner_jobs_running ON runner_jobs (runner_id) WHERE status = 'running';
CREATE INDEX runner_jobs_lapsing ON runner_jobs (lease_until) WHERE status = 'running';
CREATE INDEX runner_jobs_uncollected ON runner_jobs (task_id) WHERE NOT collected;
