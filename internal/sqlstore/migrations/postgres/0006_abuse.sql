-- Abuse of anonymous endpoints. PostgreSQL. Keep in step with ../sqlite/0006_abuse.sql.
--
-- An anonymous denial names the client address it came from (source), and one aggregated event
-- stands for repeat_count identical denials made from first_time to last_time (unix
-- nanoseconds); every other event has repeat_count 0. The hash covers them only when set, so the
-- events written before stay as they were (see hashedEvent in ../../audit.go).

-- +goose Up
ALTER TABLE audit_events ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN repeat_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN first_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN last_time BIGINT NOT NULL DEFAULT 0;
-- The purge of UNCLAIMED agents whose claim code lapsed.
CREATE INDEX agents_status_claim_expires_at ON agents (status, claim_expires_at);

-- +goose Down
DROP INDEX agents_status_claim_expires_at;
ALTER TABLE audit_events DROP COLUMN last_time;
ALTER TABLE audit_events DROP COLUMN first_time;
ALTER TABLE audit_events DROP COLUMN repeat_count;
ALTER TABLE audit_events DROP COLUMN source;
