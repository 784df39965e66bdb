-- Initial schema, SQLite. Keep in step with ../postgres/0001_init.sql: same tables, columns and
-- constraint meaning; only the types differ.
--
-- Times are INTEGER unix nanoseconds UTC, 0 for the zero time. Booleans are INTEGER 0/1.
-- Ids are TEXT. Optional references (agents.owner_id, agents.claim_code_hash) are NULL when unset.

-- +goose Up
CREATE TABLE users (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    admin      INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES users (id),
    name       TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0,
    revoked_at INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE agents (
    id               TEXT    NOT NULL PRIMARY KEY,
    handle           TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    description      TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('UNCLAIMED', 'CLAIMED', 'REVOKED')),
    owner_id         TEXT    REFERENCES users (id),
    created_at       INTEGER NOT NULL,
    claimed_at       INTEGER NOT NULL DEFAULT 0,
    revoked_at       INTEGER NOT NULL DEFAULT 0,
    claim_code_hash  TEXT    UNIQUE,
    claim_expires_at INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX agents_owner_id ON agents (owner_id);

CREATE TABLE agent_keys (
    did        TEXT    NOT NULL PRIMARY KEY,
    agent_id   TEXT    NOT NULL REFERENCES agents (id),
    jkt        TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX agent_keys_agent_id ON agent_keys (agent_id);
CREATE INDEX agent_keys_jkt ON agent_keys (jkt);

CREATE TABLE signing_keys (
    kid           TEXT    NOT NULL PRIMARY KEY,
    alg           TEXT    NOT NULL,
    public_jwk    BLOB    NOT NULL,
    private       BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    active_at     INTEGER NOT NULL,
    publish_until INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX signing_keys_publish_until ON signing_keys (publish_until);

CREATE TABLE revoked_tokens (
    jti        TEXT    NOT NULL PRIMARY KEY,
    agent_id   TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
) STRICT;
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

CREATE TABLE used_jtis (
    id         TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

-- audit_events is a hash chain: hash = hex(sha256(prev_hash || "\n" || canonical JSON of the
-- event)); see ../../audit.go. seq is assigned by the store, gapless, under the write lock.
CREATE TABLE audit_events (
    seq          INTEGER NOT NULL PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    time         INTEGER NOT NULL,
    request_id   TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    actor_type   TEXT    NOT NULL,
    actor_id     TEXT    NOT NULL,
    principal_id TEXT    NOT NULL,
    agent_id     TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    token_id     TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_agent_id ON audit_events (agent_id, seq);

-- +goose Down
DROP TABLE audit_events;
DROP TABLE used_jtis;
DROP TABLE revoked_tokens;
DROP TABLE signing_keys;
DROP TABLE agent_keys;
DROP TABLE agents;
DROP TABLE api_tokens;
DROP TABLE users;
