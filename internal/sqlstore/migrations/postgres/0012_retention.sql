-- Retention of state. PostgreSQL. Keep in step with ../sqlite/0012_retention.sql.
--
-- PurgeEnded (../../retention.go) deletes tasks, grants and grant requests that ended longer
-- than --retention ago; each of its steps selects by one of the times below, so that a purge
-- reads what it deletes, not the table. The partial indexes leave out the rows that have not
-- ended (time 0), which the purge's conditions state.
--
-- The audit trail's filters by client request id and by upstream (GET /v1/audit, mandate audit
-- explain <client request id> as an admin) had no index and read the whole table; their
-- indexes are partial, so an event without one (every token issue) writes nothing to them.

-- +goose Up
CREATE INDEX tasks_expires_at ON tasks (expires_at);
CREATE INDEX tasks_ended_at ON tasks (ended_at) WHERE ended_at <> 0;
CREATE INDEX grants_expires_at ON grants (expires_at);
CREATE INDEX grants_revoked_at ON grants (revoked_at) WHERE revoked_at <> 0;
CREATE INDEX grant_requests_decided_at ON grant_requests (decided_at) WHERE decided_at <> 0;
CREATE INDEX grant_requests_expires_at ON grant_requests (expires_at) WHERE expires_at <> 0;

CREATE INDEX audit_events_client_request_id ON audit_events (client_request_id, seq) WHERE client_request_id <> '';
CREATE INDEX audit_events_upstream ON audit_events (upstream, seq) WHERE upstream <> '';

-- +goose Down
DROP INDEX audit_events_upstream;
DROP INDEX audit_events_client_request_id;
DROP INDEX grant_requests_expires_at;
DROP INDEX grant_requests_decided_at;
DROP INDEX grants_revoked_at;
DROP INDEX grants_expires_at;
DROP INDEX tasks_ended_at;
DROP INDEX tasks_expires_at;
