-- taskhost on PostgreSQL, schema 5: one-time rewrites of rows written by earlier versions that
-- SQL alone cannot do (they read the encoded task body), each recorded here once done so that
-- no later start repeats it.

CREATE TABLE backfills (
    name    text PRIMARY KEY,
    done_at timestamptz NOT NULL DEFAULT now()
);
