-- taskhost on PostgreSQL, schema 2: the task type beside the task (listings filter on it) and
-- the statistics cells (storage::cells) kept in the transaction of each task write.

ALTER TABLE tasks ADD COLUMN task_type text NOT NULL DEFAULT '';

-- One row per (owner, plugin, project label, creation day): tasks per status in
-- TaskStatus::ALL order, and the summed run time of the completed ones that have both times.
CREATE TABLE task_cells (
    owner       text NOT NULL,
    plugin      text NOT NULL,
    has_project boolean NOT NULL,
    project     text NOT NULL,
    day         text NOT NULL,
    by_status   bigint[] NOT NULL CHECK (cardinality(by_status) = 7),
    duration_ms bigint NOT NULL,
    timed       bigint NOT NULL,
    PRIMARY KEY (owner, plugin, has_project, project, day)
);
