-- Folds one customer's rows of a batch into one update, in the batch's order:
-- `||` lets a later row's value win per attribute, as single writes would.
CREATE AGGREGATE jsonb_merge_agg(jsonb) (
    SFUNC = jsonb_concat,
    STYPE = jsonb,
    INITCOND = '{}'
);

-- Batches applied under an idempotency key, recorded in the transaction that
-- applied them, so a caller retrying after a crash never applies one twice.
CREATE TABLE applied_batches (
    idempotency_key text PRIMARY KEY,
    datasource_id   bigint NOT NULL,
    rows_stored     bigint NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);
