-- Workload identity federation: service accounts, trusted issuers and their rules. SQLite. Keep
-- in step with ../postgres/0004_federation.sql: same tables, columns and constraint meaning;
-- only the types differ.
--
-- Service accounts are principals like users, so they live in users (kind 'service'): agents,
-- grants and tasks reference users (id) and take either kind. Names are unique across both.
-- claims, scopes and resources are JSON in TEXT; durations are INTEGER nanoseconds.

-- +goose Up
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'service'));
ALTER TABLE users ADD COLUMN owner_id TEXT REFERENCES users (id);
ALTER TABLE users ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1));

-- jwks is a pinned key set; NULL = OIDC discovery.
CREATE TABLE federation_issuers (
    url                    TEXT    NOT NULL PRIMARY KEY,
    jwks                   TEXT,
    max_assertion_lifetime INTEGER NOT NULL,
    require_jti            INTEGER NOT NULL CHECK (require_jti IN (0, 1)),
    shared                 INTEGER NOT NULL CHECK (shared IN (0, 1)),
    created_at             INTEGER NOT NULL
) STRICT;

CREATE TABLE federation_rules (
    id              TEXT    NOT NULL PRIMARY KEY,
    issuer          TEXT    NOT NULL REFERENCES federation_issuers (url) ON DELETE CASCADE,
    audience        TEXT    NOT NULL,
    subject_prefix  TEXT    NOT NULL DEFAULT '',
    claims          TEXT    NOT NULL,
    condition       TEXT    NOT NULL DEFAULT '',
    service_account TEXT    NOT NULL REFERENCES users (id),
    scopes          TEXT    NOT NULL,
    resources       TEXT    NOT NULL,
    token_ttl       INTEGER NOT NULL,
    require_dpop    INTEGER NOT NULL CHECK (require_dpop IN (0, 1)),
    disabled        INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX federation_rules_issuer ON federation_rules (issuer, created_at);

-- A refusal names its request id; the audit trail is searched by it.
CREATE INDEX audit_events_request_id ON audit_events (request_id);

-- +goose Down
DROP INDEX audit_events_request_id;
DROP TABLE federation_rules;
DROP TABLE federation_issuers;
ALTER TABLE users DROP COLUMN disabled;
ALTER TABLE users DROP COLUMN description;
ALTER TABLE users DROP COLUMN owner_id;
ALTER TABLE users DROP COLUMN kind;
