-- Delegation: grant requests, grants, tasks, and the revocation log. SQLite. Keep in step with
-- ../postgres/0002_delegation.sql: same tables, columns and constraint meaning; only the types
-- differ.
--
-- Lists ([]string, []json.RawMessage) are stored as JSON arrays and maps (budgets) as JSON
-- objects, in TEXT. Durations are INTEGER nanoseconds.

-- +goose Up
-- grant_id is set when the request is approved; the link that the store enforces is the other
-- way round (grants.request_id), so that neither table must exist before the other's rows.
CREATE TABLE grant_requests (
    id                    TEXT    NOT NULL PRIMARY KEY,
    agent_id              TEXT    NOT NULL REFERENCES agents (id),
    owner_id              TEXT    NOT NULL REFERENCES users (id),
    scopes                TEXT    NOT NULL,
    resources             TEXT    NOT NULL,
    authorization_details TEXT    NOT NULL,
    max_task_ttl          INTEGER NOT NULL,
    max_token_ttl         INTEGER NOT NULL,
    max_depth             INTEGER NOT NULL,
    allow_subdelegation   INTEGER NOT NULL CHECK (allow_subdelegation IN (0, 1)),
    budget                TEXT    NOT NULL,
    reason                TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    grant_id              TEXT,
    created_at            INTEGER NOT NULL,
    decided_at            INTEGER NOT NULL DEFAULT 0,
    expires_at            INTEGER NOT NULL DEFAULT 0,
    last_polled_at        INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX grant_requests_owner_id ON grant_requests (owner_id, status);
CREATE INDEX grant_requests_agent_id ON grant_requests (agent_id);

CREATE TABLE grants (
    id                    TEXT    NOT NULL PRIMARY KEY,
    principal_id          TEXT    NOT NULL REFERENCES users (id),
    agent_id              TEXT    NOT NULL REFERENCES agents (id),
    scopes                TEXT    NOT NULL,
    resources             TEXT    NOT NULL,
    authorization_details TEXT    NOT NULL,
    max_task_ttl          INTEGER NOT NULL,
    max_token_ttl         INTEGER NOT NULL,
    max_depth             INTEGER NOT NULL,
    allow_subdelegation   INTEGER NOT NULL CHECK (allow_subdelegation IN (0, 1)),
    budget                TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL DEFAULT 0,
    revoked_at            INTEGER NOT NULL DEFAULT 0,
    request_id            TEXT    UNIQUE REFERENCES grant_requests (id)
) STRICT;
CREATE INDEX grants_principal_id ON grants (principal_id);
CREATE INDEX grants_agent_id ON grants (agent_id);

-- root_id is the depth-1 task of the chain, the row itself at depth 1, so it has no foreign key;
-- parent_id has one, so a chain is a tree rooted in a task that exists.
CREATE TABLE tasks (
    id                    TEXT    NOT NULL PRIMARY KEY,
    grant_id              TEXT    NOT NULL REFERENCES grants (id),
    parent_id             TEXT    REFERENCES tasks (id),
    root_id               TEXT    NOT NULL,
    depth                 INTEGER NOT NULL,
    principal_id          TEXT    NOT NULL REFERENCES users (id),
    agent_id              TEXT    NOT NULL REFERENCES agents (id),
    instance_jkt          TEXT    NOT NULL,
    key_jkt               TEXT    NOT NULL DEFAULT '',
    purpose               TEXT    NOT NULL,
    scopes                TEXT    NOT NULL,
    resources             TEXT    NOT NULL,
    authorization_details TEXT    NOT NULL,
    budget                TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('active', 'completed', 'revoked')),
    created_at            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL DEFAULT 0,
    ended_at              INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX tasks_grant_id ON tasks (grant_id);
CREATE INDEX tasks_parent_id ON tasks (parent_id);
CREATE INDEX tasks_root_id ON tasks (root_id);
CREATE INDEX tasks_agent_id ON tasks (agent_id);
CREATE INDEX tasks_principal_id ON tasks (principal_id);

-- revocations is the log verifiers follow by seq. AUTOINCREMENT, not a plain INTEGER PRIMARY
-- KEY: Purge deletes expired entries, the newest included, and a plain rowid would then hand out
-- the deleted seq again, which a verifier past it would never read. AUTOINCREMENT never reuses a
-- seq, and the single writer assigns them in commit order. expires_at 0 = never.
CREATE TABLE revocations (
    seq        INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('agent', 'grant', 'task', 'token', 'key')),
    id         TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
) STRICT;
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
