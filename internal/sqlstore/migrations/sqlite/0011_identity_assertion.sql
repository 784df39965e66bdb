-- An upstream may ask the proxy for a signed identity assertion of who acts for whom on each
-- call (the Txn-Token header; docs/proxy.md). SQLite. Keep in step with
-- ../postgres/0011_identity_assertion.sql.

-- +goose Up
ALTER TABLE upstreams ADD COLUMN identity_assertion INTEGER NOT NULL DEFAULT 0 CHECK (identity_assertion IN (0, 1));

-- +goose Down
ALTER TABLE upstreams DROP COLUMN identity_assertion;
