-- Audiences: condition trees over a linked DCP service's attributes. The
-- conditions are kept as the user wrote them (checked when saved) and are
-- checked again against the registry whenever they are used, so an attribute
-- archived later makes its conditions stop holding instead of erroring.
CREATE TABLE audiences (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    project_id      bigint NOT NULL REFERENCES projects (id),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    description     text NOT NULL DEFAULT '',
    conditions      jsonb NOT NULL DEFAULT '[]',
    segmentation    boolean NOT NULL DEFAULT false,
    archived        boolean NOT NULL DEFAULT false,
    created         timestamptz NOT NULL DEFAULT now(),
    last_modified   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audiences_project_idx ON audiences (project_id, id);
CREATE INDEX audiences_account_idx ON audiences (account_id, id);
