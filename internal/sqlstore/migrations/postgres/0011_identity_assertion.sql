-- An upstream may ask the proxy for a signed identity assertion of who acts for whom on each
-- call (the Txn-Token header; docs/proxy.md). PostgreSQL. Keep in step with
-- ../sqlite/0011_identity_assertion.sql.

-- +goose Up
ALTER TABLE upstreams ADD COLUMN identity_assertion BOOLEAN NOT NULL DEFAULT FALSE;

-- +goose Down
ALTER TABLE upstreams DROP COLUMN identity_assertion;
