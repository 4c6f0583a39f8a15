-- taskhost on PostgreSQL, schema 8: what a runner says about itself (os, architecture,
-- capabilities, resource info) and the resource usage its heartbeats report.

ALTER TABLE runners ADD COLUMN profile jsonb NOT NULL DEFAULT '{}';
ALTER TABLE runners ADD COLUMN usage jsonb;
