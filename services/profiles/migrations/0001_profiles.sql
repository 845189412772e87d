-- Attribute values: one row per (customer, table), keyed by attribute id so
-- that archiving an attribute and registering a new one under the same name
-- never mixes their values. On a distributed cluster the table is sharded by
-- customer_id (see docs/scaling.md).
CREATE TABLE profiles (
    customer_id     text NOT NULL,
    datasource_id   bigint NOT NULL,
    data            jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, datasource_id)
);
