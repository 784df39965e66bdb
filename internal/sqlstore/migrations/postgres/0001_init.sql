-- Initial schema, PostgreSQL. Keep in step with ../sqlite/0001_init.sql: same tables, columns and
-- constraint meaning; only the types differ.
--
-- Times are BIGINT unix nanoseconds UTC, 0 for the zero time. Ids are TEXT. Optional references
-- (agents.owner_id, agents.claim_code_hash) are NULL when unset.
--
-- Unique constraints the store maps to domain errors are named <table>_<column>_key, primary
-- keys included (see uniqueViolation in errors.go): do not rename them.

-- +goose Up
CREATE TABLE users (
    id         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT  NOT NULL,
    CONSTRAINT users_id_key PRIMARY KEY (id),
    CONSTRAINT users_name_key UNIQUE (name)
);

CREATE TABLE api_tokens (
    id         TEXT   NOT NULL,
    user_id    TEXT   NOT NULL REFERENCES users (id),
    name       TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT api_tokens_id_key PRIMARY KEY (id),
    CONSTRAINT api_tokens_hash_key UNIQUE (hash)
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE agents (
    id               TEXT   NOT NULL,
    handle           TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    description      TEXT   NOT NULL,
    status           TEXT   NOT NULL CHECK (status IN ('UNCLAIMED', 'CLAIMED', 'REVOKED')),
    owner_id         TEXT   REFERENCES users (id),
    created_at       BIGINT NOT NULL,
    claimed_at       BIGINT NOT NULL DEFAULT 0,
    revoked_at       BIGINT NOT NULL DEFAULT 0,
    claim_code_hash  TEXT,
    claim_expires_at BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT agents_id_key PRIMARY KEY (id),
    CONSTRAINT agents_handle_key UNIQUE (handle),
    CONSTRAINT agents_claim_code_hash_key UNIQUE (claim_code_hash)
);
CREATE INDEX agents_owner_id ON agents (owner_id);

CREATE TABLE agent_keys (
    did        TEXT   NOT NULL,
    agent_id   TEXT   NOT NULL REFERENCES agents (id),
    jkt        TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT agent_keys_did_key PRIMARY KEY (did)
);
CREATE INDEX agent_keys_agent_id ON agent_keys (agent_id);
CREATE INDEX agent_keys_jkt ON agent_keys (jkt);

CREATE TABLE signing_keys (
    kid           TEXT   NOT NULL,
    alg           TEXT   NOT NULL,
    public_jwk    BYTEA  NOT NULL,
    private       BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    active_at     BIGINT NOT NULL,
    publish_until BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT signing_keys_kid_key PRIMARY KEY (kid)
);
CREATE INDEX signing_keys_publish_until ON signing_keys (publish_until);

CREATE TABLE revoked_tokens (
    jti        TEXT   NOT NULL,
    agent_id   TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    CONSTRAINT revoked_tokens_jti_key PRIMARY KEY (jti)
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

CREATE TABLE used_jtis (
    id         TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    CONSTRAINT used_jtis_id_key PRIMARY KEY (id)
);
CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

-- audit_events is a hash chain: hash = hex(sha256(prev_hash || "\n" || canonical JSON of the
-- event)); see ../../audit.go. seq is assigned by the store, gapless, under an advisory lock.
CREATE TABLE audit_events (
    seq          BIGINT NOT NULL,
    id           TEXT   NOT NULL,
    time         BIGINT NOT NULL,
    request_id   TEXT   NOT NULL,
    action       TEXT   NOT NULL,
    outcome      TEXT   NOT NULL,
    reason       TEXT   NOT NULL,
    detail       TEXT   NOT NULL,
    actor_type   TEXT   NOT NULL,
    actor_id     TEXT   NOT NULL,
    principal_id TEXT   NOT NULL,
    agent_id     TEXT   NOT NULL,
    target       TEXT   NOT NULL,
    token_id     TEXT   NOT NULL,
    prev_hash    TEXT   NOT NULL,
    hash         TEXT   NOT NULL,
    CONSTRAINT audit_events_seq_key PRIMARY KEY (seq),
    CONSTRAINT audit_events_id_key UNIQUE (id)
);
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
