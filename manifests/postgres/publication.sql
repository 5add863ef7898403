-- Run on each REGION's database, after `nofx db migrate` created the tables:
--   psql "$REGION_DSN" -v ON_ERROR_STOP=1 -f publication.sql
-- Publishes every mirrored table (not schema_migrations, which is local to each database).
-- Safe to run twice, and to run again after an upgrade: a publication made before
-- audit_checkpoints or token_usage existed gets them added (then, on the global server:
-- ALTER SUBSCRIPTION nofx_<region> REFRESH PUBLICATION).
--
-- TRUNCATE is deliberately not published: a replicated TRUNCATE empties the whole table on the
-- global subscriber, the rows of every region with it. Inserts, updates (the runs upsert) and
-- deletes are replicated row by row, keyed by primary keys that start with region.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'nofx_mirror') THEN
        CREATE PUBLICATION nofx_mirror
            FOR TABLE runs, audit_events, usage_records, spec_versions, audit_checkpoints,
                token_usage
            WITH (publish = 'insert, update, delete');
    END IF;
    IF NOT EXISTS (SELECT FROM pg_publication_tables
                   WHERE pubname = 'nofx_mirror' AND tablename = 'audit_checkpoints') THEN
        ALTER PUBLICATION nofx_mirror ADD TABLE audit_checkpoints;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_publication_tables
                   WHERE pubname = 'nofx_mirror' AND tablename = 'token_usage') THEN
        ALTER PUBLICATION nofx_mirror ADD TABLE token_usage;
    END IF;
END
$$;
