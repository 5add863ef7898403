-- Cached steps: the outputs of each successful attempt of a step that sets `cache`, under its
-- cache key (which covers the namespace and account too). A later attempt with the same key
-- reuses the newest entry younger than its step's ttl instead of running a Job. Written with the
-- attempt's usage record, in the same transaction; read by the operator of the same region only,
-- so the table is not published to the global database. Entries are never changed; old ones
-- may be deleted (a ttl is at most 720h).
CREATE TABLE step_cache (
    region      text NOT NULL,
    cache_key   text NOT NULL,
    namespace   text NOT NULL,
    account     text NOT NULL,
    run_uid     text NOT NULL,
    run_name    text NOT NULL,
    step        text NOT NULL,
    attempt     integer NOT NULL,
    outputs     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (region, cache_key, run_uid, step)
);
CREATE INDEX step_cache_newest ON step_cache (region, cache_key, created_at DESC);
