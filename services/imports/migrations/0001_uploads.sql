-- One row per object version found in a table's upload path: the upload
-- history, and the queue the importers work through.
CREATE TABLE uploads (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL,
    dcp_service_id  bigint NOT NULL,
    datasource_id   bigint NOT NULL,
    -- Importers work only on their own bucket's uploads, should several share a database.
    bucket          text NOT NULL,
    s3_key          text NOT NULL,
    version_id      text NOT NULL DEFAULT '',
    etag            text NOT NULL,
    object_modified timestamptz NOT NULL,
    file_name       text NOT NULL,
    size_bytes      bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'processed', 'partially_processed', 'failed')),
    received_at     timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    rows_total      bigint NOT NULL DEFAULT 0,
    rows_ok         bigint NOT NULL DEFAULT 0,
    rows_failed     bigint NOT NULL DEFAULT 0,
    errors_kept     bigint NOT NULL DEFAULT 0,
    error           text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    -- The object has been archived or deleted (or is kept by setting).
    disposed        boolean NOT NULL DEFAULT false,
    -- The same object seen again (a later listing, a repeated event) is the same upload.
    UNIQUE (bucket, s3_key, version_id, etag, object_modified)
);

CREATE INDEX uploads_history ON uploads (datasource_id, id DESC);
CREATE INDEX uploads_open ON uploads (bucket, datasource_id, id) WHERE status IN ('pending', 'processing');
CREATE INDEX uploads_undisposed ON uploads (id) WHERE NOT disposed AND status IN ('processed', 'partially_processed', 'failed');

CREATE TABLE upload_errors (
    upload_id   bigint NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    row_number  bigint NOT NULL,
    column_name text NOT NULL,
    value       text NOT NULL,
    message     text NOT NULL,
    PRIMARY KEY (upload_id, seq)
);
