-- A keyed audit trail. Rows written with an audit key store its id (the key never leaves the
-- operator's Secret); rows written before keep a null key_id and a plain sha256 hash, and
-- verify as such. Apply to the global database first, then the regions, then add
-- audit_checkpoints to each region's publication (manifests/postgres/publication.sql does).
ALTER TABLE audit_events ADD COLUMN key_id text;

-- The signed head of a stream: the row at seq had hash when the checkpoint was made. One per
-- finished Run (with its terminal event) and, periodically, per changed Agent or Template
-- stream. mac = HMAC-SHA256 over the other columns, see nofx/mirror/chain.py.
CREATE TABLE audit_checkpoints (
    region text NOT NULL,
    stream text NOT NULL,
    seq    bigint NOT NULL CHECK (seq >= 1),
    hash   text NOT NULL,
    at     timestamptz NOT NULL,
    key_id text NOT NULL,
    mac    text NOT NULL,
    PRIMARY KEY (region, stream, seq)
);

-- `nofx audit verify RUN`: one stream's checkpoints, in every region.
CREATE INDEX audit_checkpoints_by_stream ON audit_checkpoints (stream);

CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION nofx_reject_change();

-- The periodic checkpoint finds the heads of Agent and Template streams without reading the
-- Runs' rows.
CREATE INDEX audit_events_registry_heads ON audit_events (region, stream, seq)
    WHERE kind <> 'Run';
