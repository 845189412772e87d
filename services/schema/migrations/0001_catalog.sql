-- The attribute registry. These tables are small and read on every request,
-- so on a distributed cluster they are reference tables (copied to every
-- node); see docs/scaling.md.

CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    kind        text NOT NULL CHECK (kind IN ('classic', 'personal')),
    -- SHA-256 of the whole token; the token itself is shown once and never stored.
    token_hash  bytea NOT NULL UNIQUE,
    label       text,
    created     timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX tokens_account_idx ON tokens (account_id);

CREATE TABLE dcp_services (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    name            text NOT NULL,
    archived        boolean NOT NULL DEFAULT false,
    aws_access_key  text NOT NULL UNIQUE,
    aws_secret_key  text NOT NULL,
    created         timestamptz NOT NULL DEFAULT now(),
    last_modified   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dcp_services_account_idx ON dcp_services (account_id, id);

CREATE TABLE projects (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    name            text NOT NULL,
    dcp_service_id  bigint REFERENCES dcp_services (id),
    created         timestamptz NOT NULL DEFAULT now(),
    last_modified   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_account_idx ON projects (account_id, id);

CREATE TABLE datasources (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id              bigint NOT NULL REFERENCES accounts (id),
    dcp_service_id          bigint NOT NULL REFERENCES dcp_services (id),
    name                    text NOT NULL,
    description             text,
    keyfield_locator_type   text NOT NULL
        CHECK (keyfield_locator_type IN ('cookie', 'query parameter', 'js_variable', 'uid')),
    keyfield_locator_name   text,
    is_optimizely           boolean NOT NULL DEFAULT false,
    archived                boolean NOT NULL DEFAULT false,
    created                 timestamptz NOT NULL DEFAULT now(),
    last_modified           timestamptz NOT NULL DEFAULT now(),
    CHECK ((keyfield_locator_type = 'uid') = (keyfield_locator_name IS NULL))
);
CREATE INDEX datasources_service_idx ON datasources (dcp_service_id, id);
CREATE UNIQUE INDEX datasources_one_optimizely_idx ON datasources (dcp_service_id) WHERE is_optimizely;

CREATE TABLE attributes (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id          bigint NOT NULL REFERENCES accounts (id),
    datasource_id       bigint NOT NULL REFERENCES datasources (id),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    datatype            text NOT NULL CHECK (datatype IN ('string', 'bool', 'long', 'double', 'datetime')),
    format              text CHECK (format IN ('yyyy-mm-dd', 'yyyy-mm-ddThh:mm:ssZ', 'epoch')),
    description         text,
    is_value_public     boolean NOT NULL DEFAULT false,
    archived            boolean NOT NULL DEFAULT false,
    created             timestamptz NOT NULL DEFAULT now(),
    last_modified       timestamptz NOT NULL DEFAULT now(),
    CHECK ((datatype = 'datetime') = (format IS NOT NULL))
);
CREATE INDEX attributes_datasource_idx ON attributes (datasource_id, id);
CREATE UNIQUE INDEX attributes_active_name_idx ON attributes (datasource_id, name) WHERE NOT archived;
