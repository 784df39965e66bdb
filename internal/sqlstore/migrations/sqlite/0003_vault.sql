-- Vault: upstream APIs, their sealed secrets, and per-task budget counters. SQLite. Keep in step
-- with ../postgres/0003_vault.sql: same tables, columns and constraint meaning; only the types
-- differ.
--
-- Secrets are stored only sealed (envelope encryption, see internal/vault/envelope.go): sealed
-- is version || master key id || wrapped data key || ciphertext, never plaintext. routes and
-- oauth2 are JSON in TEXT.

-- +goose Up
CREATE TABLE upstreams (
    name          TEXT    NOT NULL PRIMARY KEY,
    base_url      TEXT    NOT NULL,
    auth          TEXT    NOT NULL,
    param         TEXT    NOT NULL DEFAULT '',
    oauth2        TEXT,
    allow_private INTEGER NOT NULL CHECK (allow_private IN (0, 1)),
    routes        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- version grows with every write of the row (see SwapSecrets). expires_at 0 = never.
CREATE TABLE upstream_secrets (
    upstream   TEXT    NOT NULL REFERENCES upstreams (name) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    sealed     BLOB    NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, kind)
) STRICT;

-- used counts what a task has spent of its budget named key (e.g. "calls:ahrefs").
CREATE TABLE task_budget_use (
    task_id TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    key     TEXT    NOT NULL,
    used    INTEGER NOT NULL,
    PRIMARY KEY (task_id, key)
) STRICT;

-- +goose Down
DROP TABLE task_budget_use;
DROP TABLE upstream_secrets;
DROP TABLE upstreams;
