-- Identity links: which customer id of a table is which Optimizely user.
-- Sharded by optimizely_user_id on a distributed cluster: the consolidated
-- view reads one user's links at a time (see docs/scaling.md).
CREATE TABLE links (
    optimizely_user_id  text NOT NULL,
    dcp_service_id      bigint NOT NULL,
    datasource_id       bigint NOT NULL,
    customer_id         text NOT NULL,
    created             timestamptz NOT NULL DEFAULT now(),
    last_modified       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (optimizely_user_id, dcp_service_id, datasource_id)
);
-- How many users one customer id links to (the guardrail), and who they are.
CREATE INDEX links_customer_idx ON links (datasource_id, customer_id);
