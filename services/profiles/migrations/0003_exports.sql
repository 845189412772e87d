-- Exports of a table's profiles or an audience's members to the bucket. A row
-- is written before the work starts, so an export interrupted by a crash is
-- found and run again by whichever replica is up.
CREATE TABLE exports (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL,
    dcp_service_id  bigint NOT NULL,
    datasource_id   bigint,
    audience_id     bigint,
    format          text NOT NULL CHECK (format IN ('csv', 'jsonl')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    bucket          text NOT NULL,
    key             text NOT NULL,
    row_count       bigint NOT NULL DEFAULT 0,
    size_bytes      bigint NOT NULL DEFAULT 0,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    created         timestamptz NOT NULL DEFAULT now(),
    started         timestamptz,
    finished        timestamptz,
    CHECK ((datasource_id IS NULL) <> (audience_id IS NULL))
);
CREATE INDEX exports_unfinished_idx ON exports (id) WHERE status IN ('pending', 'running');
