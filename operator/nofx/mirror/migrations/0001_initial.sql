-- The mirror's tables. Every row carries the region of the operator that wrote it and every
-- primary key starts with region, so a global database subscribed to several regions holds
-- all their rows without collisions. No serial columns: sequences are not replicated.
-- Forward-only: never edit this file once released; add 0002_... instead.

-- Latest known state of each Run (upserted by the operator).
CREATE TABLE runs (
    region      text NOT NULL,
    uid         text NOT NULL,
    namespace   text NOT NULL,
    name        text NOT NULL,
    template    text,
    account     text NOT NULL,
    phase       text,
    created_at  timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (region, uid)
);
CREATE INDEX runs_by_name ON runs (namespace, name);

-- Append-only and tamper-evident: hash = sha256(prev_hash || '\n' || canonical event), see
-- nofx/mirror/chain.py. One stream per Run (run/<uid>) and per Agent or Template name.
CREATE TABLE audit_events (
    region     text NOT NULL,
    stream     text NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 1),
    at         timestamptz NOT NULL,
    kind       text NOT NULL,
    namespace  text NOT NULL,
    name       text NOT NULL,
    uid        text NOT NULL,
    step       text,
    item_index integer,
    attempt    integer,
    from_phase text,
    to_phase   text,
    reason     text NOT NULL,
    message    text NOT NULL,
    actor      text,
    spec_hash  text,
    prev_hash  text NOT NULL,
    hash       text NOT NULL,
    PRIMARY KEY (region, stream, seq)
);
-- `nofx audit RUN`: the events of a Run by namespace and name.
CREATE INDEX audit_events_by_object ON audit_events (namespace, name, kind);
-- `nofx audit verify RUN`: one stream, in every region.
CREATE INDEX audit_events_by_stream ON audit_events (stream);

-- One row per finished step attempt. billed_at decides the billing day: the attempt's finish,
-- else its start, else when it was written (set by the Store, never null).
CREATE TABLE usage_records (
    region         text NOT NULL,
    run_uid        text NOT NULL,
    namespace      text NOT NULL,
    run_name       text NOT NULL,
    step           text NOT NULL,
    item_index     integer,
    -- A primary key cannot hold a null item_index; generated columns are computed by the
    -- subscriber too (logical replication does not send them).
    item_key       integer GENERATED ALWAYS AS (coalesce(item_index, -1)) STORED,
    attempt        integer NOT NULL,
    job_name       text NOT NULL,
    account        text NOT NULL,
    agent          text NOT NULL,
    started_at     timestamptz,
    finished_at    timestamptz,
    billed_at      timestamptz NOT NULL,
    wall_seconds   double precision NOT NULL,
    cpu_request    text,
    memory_request text,
    cost           numeric NOT NULL,
    currency       text NOT NULL,
    PRIMARY KEY (region, run_uid, step, item_key, attempt)
);
-- `nofx usage --account A --since T`.
CREATE INDEX usage_records_by_account ON usage_records (account, billed_at);

-- Every applied spec of an Agent or Template, for history and rollback. Specs hold only
-- references to secrets, never their values.
CREATE TABLE spec_versions (
    region    text NOT NULL,
    kind      text NOT NULL,
    namespace text NOT NULL,
    name      text NOT NULL,
    version   integer NOT NULL CHECK (version >= 1),
    uid       text NOT NULL,
    spec      jsonb NOT NULL,
    spec_hash text NOT NULL,
    at        timestamptz NOT NULL,
    actor     text,
    PRIMARY KEY (region, kind, namespace, name, version)
);

-- Append-only intent: the operator's writes never update or delete history, so any attempt is
-- refused. These are ordinary (ENABLE) triggers, which do not fire in sessions with
-- session_replication_role = replica: the logical replication apply worker of a global
-- subscriber is not blocked, and a superuser can still repair (or, in tests, tamper).
CREATE FUNCTION nofx_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER usage_records_append_only BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER usage_records_no_truncate BEFORE TRUNCATE ON usage_records
    FOR EACH STATEMENT EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER spec_versions_append_only BEFORE UPDATE OR DELETE ON spec_versions
    FOR EACH ROW EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER spec_versions_no_truncate BEFORE TRUNCATE ON spec_versions
    FOR EACH STATEMENT EXECUTE FUNCTION nofx_reject_change();
