-- taskhost on PostgreSQL, schema 4: what dispatch through the database needs beside a task.
-- `depends_on` lists the tasks it waits for: a claim passes a queued task over until they all
-- completed. `control` is a request (cancel, pause, resume) from any host to the host holding
-- the task's lease, which takes it with its next renewal.

ALTER TABLE tasks ADD COLUMN depends_on text[] NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN control text CHECK (control IN ('cancel', 'pause', 'resume'));

-- A task that ends finds the queued tasks waiting for it.
CREATE INDEX tasks_by_dependency ON tasks USING gin (depends_on) WHERE status = 'queued';
