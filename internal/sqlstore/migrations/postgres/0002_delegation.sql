-- Delegation: grant requests, grants, tasks, and the revocation log. PostgreSQL. Keep in step
-- with ../sqlite/0002_delegation.sql: same tables, columns and constraint meaning; only the types
-- differ.
--
-- Lists ([]string, []json.RawMessage) are stored as JSON arrays and maps (budgets) as JSON
-- objects, in TEXT (not JSONB, which would reorder keys and change what was stored). Durations
-- are BIGINT nanoseconds.
--
-- Unique constraints the store maps to domain errors are named <table>_<column>_key, primary
-- keys included (see uniqueViolation in errors.go): do not rename them.

-- +goose Up
-- grant_id is set when the request is approved; the link that the store enforces is the other
-- way round (grants.request_id), so that neither table must exist before the other's rows.
CREATE TABLE grant_requests (
    id                    TEXT    NOT NULL,
    agent_id              TEXT    NOT NULL REFERENCES agents (id),
    owner_id              TEXT    NOT NULL REFERENCES users (id),
    scopes                TEXT    NOT NULL,
    resources             TEXT    NOT NULL,
    authorization_details TEXT    NOT NULL,
    max_task_ttl          BIGINT  NOT NULL,
    max_token_ttl         BIGINT  NOT NULL,
    max_depth             BIGINT  NOT NULL,
    allow_subdelegation   BOOLEAN NOT NULL,
    budget                TEXT    NOT NULL,
    reason                TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    grant_id              TEXT,
    created_at            BIGINT  NOT NULL,
    decided_at            BIGINT  NOT NULL DEFAULT 0,
    expires_at            BIGINT  NOT NULL DEFAULT 0,
    last_polled_at        BIGINT  NOT NULL DEFAULT 0,
    CONSTRAINT grant_requests_id_key PRIMARY KEY (id)
);
CREATE INDEX grant_requests_owner_id ON grant_requests (owner_id, status);
CREATE INDEX grant_requests_agent_id ON grant_requests (agent_id);

CREATE TABLE grants (
    id                    TEXT    NOT NULL,
    principal_id          TEXT    NOT NULL REFERENCES users (id),
    agent_id              TEXT    NOT NULL REFERENCES agents (id),
    scopes                TEXT    NOT NULL,
    resources             TEXT    NOT NULL,
    authorization_details TEXT    NOT NULL,
    max_task_ttl          BIGINT  NOT NULL,
    max_token_ttl         BIGINT  NOT NULL,
    max_depth             BIGINT  NOT NULL,
    allow_subdelegation   BOOLEAN NOT NULL,
    budget                TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at            BIGINT  NOT NULL,
    expires_at            BIGINT  NOT NULL DEFAULT 0,
    revoked_at            BIGINT  NOT NULL DEFAULT 0,
    request_id            TEXT    REFERENCES grant_requests (id),
    CONSTRAINT grants_id_key PRIMARY KEY (id),
    CONSTRAINT grants_request_id_key UNIQUE (request_id)
);
CREATE INDEX grants_principal_id ON grants (principal_id);
CREATE INDEX grants_agent_id ON grants (agent_id);

-- root_id is the depth-1 task of the chain, the row itself at depth 1, so it has no foreign key;
-- parent_id has one, so a chain is a tree rooted in a task that exists.
CREATE TABLE tasks (
    id                    TEXT   NOT NULL,
    grant_id              TEXT   NOT NULL REFERENCES grants (id),
    parent_id             TEXT   REFERENCES tasks (id),
    root_id               TEXT   NOT NULL,
    depth                 BIGINT NOT NULL,
    principal_id          TEXT   NOT NULL REFERENCES users (id),
    agent_id              TEXT   NOT NULL REFERENCES agents (id),
    instance_jkt          TEXT   NOT NULL,
    key_jkt               TEXT   NOT NULL DEFAULT '',
    purpose               TEXT   NOT NULL,
    scopes                TEXT   NOT NULL,
    resources             TEXT   NOT NULL,
    authorization_details TEXT   NOT NULL,
    budget                TEXT   NOT NULL,
    status                TEXT   NOT NULL CHECK (status IN ('active', 'completed', 'revoked')),
    created_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL DEFAULT 0,
    ended_at              BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT tasks_id_key PRIMARY KEY (id)
);
CREATE INDEX tasks_grant_id ON tasks (grant_id);
CREATE INDEX tasks_parent_id ON tasks (parent_id);
CREATE INDEX tasks_root_id ON tasks (root_id);
CREATE INDEX tasks_agent_id ON tasks (agent_id);
CREATE INDEX tasks_principal_id ON tasks (principal_id);

-- revocations is the log verifiers follow by seq. seq comes from an identity sequence, and the
-- store inserts only inside audited write transactions, which hold the chain lock (see writeTx):
-- nextval is therefore called in commit order, and a transaction commits (and becomes visible)
-- before the next one can take the lock and draw a seq. A rolled-back insert leaves a gap, which
-- is harmless; a sequence never goes back, even when Purge deletes the newest entries. CACHE 1
-- (the default, written out) is required: with a larger cache each session would draw from its
-- own block of numbers, out of commit order. expires_at 0 = never.
CREATE TABLE revocations (
    seq        BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY (CACHE 1),
    kind       TEXT   NOT NULL CHECK (kind IN ('agent', 'grant', 'task', 'token', 'key')),
    id         TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    CONSTRAINT revocations_seq_key PRIMARY KEY (seq)
);
CREATE INDEX revocations_expires_at ON revocations (expires_at);

-- What a user may delegate: {"scopes": [...], "resources": [...]} set by an admin; NULL means
-- no limit (admins, and users the admin has not restricted).
ALTER TABLE users ADD COLUMN grantable TEXT;

-- +goose Down
ALTER TABLE users DROP COLUMN grantable;
DROP TABLE revocations;
DROP TABLE tasks;
DROP TABLE grants;
DROP TABLE grant_requests;
