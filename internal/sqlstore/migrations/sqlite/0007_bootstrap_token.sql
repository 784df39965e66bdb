-- The bootstrap token is a one-time credential: it only logs in (mandate login exchanges it for a
-- named API token), and it expires. SQLite. Keep in step with ../postgres/0007_bootstrap_token.sql.
--
-- Tokens made as bootstrap tokens by earlier versions keep bootstrap = 0: they may be an admin's
-- only credential, so they stay ordinary tokens, listed and revocable.

-- +goose Up
ALTER TABLE api_tokens ADD COLUMN bootstrap INTEGER NOT NULL DEFAULT 0 CHECK (bootstrap IN (0, 1));

-- +goose Down
ALTER TABLE api_tokens DROP COLUMN bootstrap;
