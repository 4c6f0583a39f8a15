-- taskhost on PostgreSQL, schema 7: plugins installed, replaced or unloaded over the API, so
-- that every host loads the same versions. A row without a component is an unload.

CREATE SEQUENCE plugin_generation;

CREATE TABLE plugins (
    name       text PRIMARY KEY,
    -- From plugin_generation at each change; a write names the one it last saw.
    generation bigint NOT NULL,
    digest     text NOT NULL,
    component  bytea,
    grants     text,
    changed_at timestamptz NOT NULL,
    changed_by text NOT NULL,
    CHECK ((component IS NULL) = (grants IS NULL))
);
