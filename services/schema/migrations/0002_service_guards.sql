-- Per-service guards of what profiles and aliases accept.
ALTER TABLE dcp_services
    ADD COLUMN pii_guard boolean NOT NULL DEFAULT true,
    ADD COLUMN alias_blocked_customer_ids text[] NOT NULL DEFAULT ARRAY['', 'null', 'undefined', '0', 'anonymous'],
    ADD COLUMN alias_max_users_per_customer_id integer NOT NULL DEFAULT 100
        CHECK (alias_max_users_per_customer_id BETWEEN 1 AND 1000000);
