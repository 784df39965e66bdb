-- Leases on the refresh of OAuth upstreams' access tokens. PostgreSQL. Keep in step with
-- ../sqlite/0014_masterkey.sql.
--
-- One row per upstream whose access token a replica is refreshing: the replica (holder) and
-- until when the lease holds (unix nanoseconds). A replica takes the lease with one atomic
-- insert-or-update that succeeds only where there is no row, or its lease has expired, so one
-- replica at a time calls the upstream's token endpoint; the others wait for the token it
-- stores. The holder deletes the row when done; a crashed holder's lease just expires.

-- +goose Up
CREATE TABLE upstream_refresh_leases (
	upstream   TEXT PRIMARY KEY,
	holder     TEXT NOT NULL,
	expires_at BIGINT NOT NULL
);

-- +goose Down
DROP TABLE upstream_refresh_leases;
