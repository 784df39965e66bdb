-- Vault: upstream APIs, their sealed secrets, and per-task budget counters. PostgreSQL. Keep in
-- step with ../sqlite/0003_vault.sql: same tables, columns and constraint meaning; only the
-- types differ.
--
-- Secrets are stored only sealed (envelope encryption, see internal/vault/envelope.go): sealed
-- is version || master key id || wrapped data key || ciphertext, never plaintext. routes and
-- oauth2 are JSON in TEXT (not JSONB, which would reorder keys).
--
-- Unique constraints the store maps to domain errors are named <table>_<column>_key, primary
-- keys included (see uniqueViolation in errors.go): do not rename them.

-- +goose Up
CREATE TABLE upstreams (
    name          TEXT    NOT NULL,
    base_url      TEXT    NOT NULL,
    auth          TEXT    NOT NULL,
    param         TEXT    NOT NULL DEFAULT '',
    oauth2        TEXT,
    allow_private BOOLEAN NOT NULL,
    routes        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    CONSTRAINT upstreams_name_key PRIMARY KEY (name)
);

-- version grows with every write of the row (see SwapSecrets). expires_at 0 = never.
CREATE TABLE upstream_secrets (
    upstream   TEXT   NOT NULL REFERENCES upstreams (name) ON DELETE CASCADE,
    kind       TEXT   NOT NULL,
    sealed     BYTEA  NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT upstream_secrets_kind_key PRIMARY KEY (upstream, kind)
);

-- used counts what a task has spent of its budget named key (e.g. "calls:ahrefs").
CREATE TABLE task_budget_use (
    task_id TEXT   NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key     TEXT   NOT NULL,
    used    BIGINT NOT NULL,
    CONSTRAINT task_budget_use_key_key PRIMARY KEY (task_id, key)
);

-- +goose Down
DROP TABLE task_budget_use;
DROP TABLE upstream_secrets;
DROP TABLE upstreams;
