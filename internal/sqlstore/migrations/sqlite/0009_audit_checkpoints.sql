-- Signed checkpoints of the audit chain head. SQLite. Keep in step with ../postgres/0009_audit_checkpoints.sql.
--
-- Each row is a compact JWS (typ mandate-audit-checkpoint+jwt, see internal/audit/checkpoint.go)
-- signing that the event seq had hash at time, by a key derived from the master key: a copy kept
-- outside the database lets mandate audit verify detect a truncated or re-hashed chain. seq and
-- hash repeat the JWS's claims for queries; only the JWS is trusted. Replicas that sign the same
-- head keep the first row (ON CONFLICT DO NOTHING). Retention removes events only up to a
-- checkpoint (by time), so the chain always starts right after one.

-- +goose Up
CREATE TABLE audit_checkpoints (
    seq  INTEGER NOT NULL PRIMARY KEY,
    hash TEXT NOT NULL,
    time INTEGER NOT NULL,
    jws  TEXT NOT NULL
) STRICT;
CREATE INDEX audit_checkpoints_time ON audit_checkpoints (time, seq);

-- +goose Down
DROP TABLE audit_checkpoints;
