-- Tokens and their cost. A step attempt's usage record keeps its wall-time cost in `cost` and
-- gains `token_cost`, the cost of the tokens it reported (in the same currency: one per Agent);
-- token_usage holds those tokens per model. Apply to the global database first, then the
-- regions, then add token_usage to each region's publication (manifests/postgres/publication.sql
-- does) and refresh the global subscriptions.
ALTER TABLE usage_records ADD COLUMN token_cost numeric NOT NULL DEFAULT 0;

CREATE TABLE token_usage (
    region        text NOT NULL,
    run_uid       text NOT NULL,
    namespace     text NOT NULL,
    run_name      text NOT NULL,
    step          text NOT NULL,
    item_index    integer,
    item_key      integer GENERATED ALWAYS AS (coalesce(item_index, -1)) STORED,
    attempt       integer NOT NULL,
    account       text NOT NULL,
    agent         text NOT NULL,
    model         text NOT NULL,
    billed_at     timestamptz NOT NULL,
    input_tokens  bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens bigint NOT NULL CHECK (output_tokens >= 0),
    cached_tokens bigint NOT NULL CHECK (cached_tokens >= 0),
    cost          numeric NOT NULL CHECK (cost >= 0),
    currency      text NOT NULL,
    PRIMARY KEY (region, run_uid, step, item_key, attempt, model)
);
-- `nofx usage --by model`.
CREATE INDEX token_usage_by_account ON token_usage (account, billed_at);

CREATE TRIGGER token_usage_append_only BEFORE UPDATE OR DELETE ON token_usage
    FOR EACH ROW EXECUTE FUNCTION nofx_reject_change();
CREATE TRIGGER token_usage_no_truncate BEFORE TRUNCATE ON token_usage
    FOR EACH STATEMENT EXECUTE FUNCTION nofx_reject_change();
