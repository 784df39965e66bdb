-- Grant-wide budget counters. PostgreSQL. Keep in step with ../sqlite/0005_grant_budget.sql: same
-- tables, columns and constraint meaning; only the types differ.
--
-- used counts the calls every task of a grant has made against its budget key (calls, or
-- calls:<upstream>). Per-task counters stay in task_budget_use.
--
-- Unique constraints the store maps to domain errors are named <table>_<column>_key, primary
-- keys included (see uniqueViolation in errors.go): do not rename them.

-- +goose Up
CREATE TABLE grant_budget_use (
    grant_id TEXT   NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    key      TEXT   NOT NULL,
    used     BIGINT NOT NULL,
    CONSTRAINT grant_budget_use_key_key PRIMARY KEY (grant_id, key)
);

-- +goose Down
DROP TABLE grant_budget_use;
