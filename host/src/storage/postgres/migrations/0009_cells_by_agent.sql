-- taskhost on PostgreSQL, schema 9: statistics cells (storage::cells) are kept per `agent`
-- label as well as per `project` label, and know the earliest creation and the latest change
-- of their tasks. The cells are rebuilt from the tasks once at start (backfill
-- `cells_by_agent`), since run times and label moves need the encoded bodies.

ALTER TABLE task_cells
    ADD COLUMN has_agent        boolean NOT NULL DEFAULT false,
    ADD COLUMN agent            text    NOT NULL DEFAULT '',
    ADD COLUMN first_created_ms bigint,
    ADD COLUMN last_changed_ms  bigint;
ALTER TABLE task_cells DROP CONSTRAINT task_cells_pkey;
ALTER TABLE task_cells ADD PRIMARY KEY (owner, plugin, has_project, project, has_agent, agent, day);
