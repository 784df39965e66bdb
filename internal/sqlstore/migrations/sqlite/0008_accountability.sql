-- Events that carry the answer. SQLite. Keep in step with ../postgres/0008_accountability.sql.
--
-- The fields an investigator filters by are columns: the client's own request id (request_id is
-- now always issued by the server), task, grant and upstream. Everything else an event carries
-- (actor handle, key thumbprints, chain, scopes, the proxied call, caller address, purpose,
-- terms, cause) is one canonical JSON object in ext, '' when empty. The hash covers each of them
-- only when set, so the events written before keep their form and hash (hashedEvent in
-- ../../audit.go).

-- +goose Up
ALTER TABLE audit_events ADD COLUMN client_request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN task_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN grant_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN upstream TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN ext TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_events_task_id ON audit_events (task_id, seq) WHERE task_id <> '';
CREATE INDEX audit_events_grant_id ON audit_events (grant_id, seq) WHERE grant_id <> '';
CREATE INDEX audit_events_principal_id ON audit_events (principal_id, seq) WHERE principal_id <> '';

-- +goose Down
DROP INDEX audit_events_principal_id;
DROP INDEX audit_events_grant_id;
DROP INDEX audit_events_task_id;
ALTER TABLE audit_events DROP COLUMN ext;
ALTER TABLE audit_events DROP COLUMN upstream;
ALTER TABLE audit_events DROP COLUMN grant_id;
ALTER TABLE audit_events DROP COLUMN task_id;
ALTER TABLE audit_events DROP COLUMN client_request_id;
