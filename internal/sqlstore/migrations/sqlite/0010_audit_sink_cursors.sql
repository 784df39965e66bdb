-- Audit sinks: how far each sink has got. SQLite. Keep in step with
-- ../postgres/0010_audit_sink_cursors.sql.
--
-- One row per sink, named as the settings name it (internal/auditsink.Spec.Name): the sequence
-- number of the last event delivered to it and of the last checkpoint. A sink with no row
-- starts at the beginning of the chain. Neither value ever moves back.

-- +goose Up
CREATE TABLE audit_sink_cursors (
	sink           TEXT PRIMARY KEY,
	seq            BIGINT NOT NULL,
	checkpoint_seq BIGINT NOT NULL,
	updated_at     BIGINT NOT NULL
);

-- +goose Down
DROP TABLE audit_sink_cursors;
