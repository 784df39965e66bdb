-- The bootstrap token is a one-time credential: it only logs in (mandate login exchanges it for a
-- named API token), and it expires. PostgreSQL. Keep in step with ../sqlite/0007_bootstrap_token.sql.
--
-- Tokens made as bootstrap tokens by earlier versions keep bootstrap = FALSE: they may be an
-- admin's only credential, so they stay ordinary tokens, listed and revocable.

-- +goose Up
ALTER TABLE api_tokens ADD COLUMN bootstrap BOOLEAN NOT NULL DEFAULT FALSE;

-- +goose Down
ALTER TABLE api_tokens DROP COLUMN bootstrap;
