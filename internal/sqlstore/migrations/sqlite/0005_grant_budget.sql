-- Grant-wide budget counters. SQLite. Keep in step with ../postgres/0005_grant_budget.sql: same
-- tables, columns and constraint meaning; only the types differ.
--
-- used counts the calls every task of a grant has made against its budget key (calls, or
-- calls:<upstream>). Per-task counters stay in task_budget_use.

-- +goose Up
CREATE TABLE grant_budget_use (
    grant_id TEXT    NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    key      TEXT    NOT NULL,
    used     INTEGER NOT NULL,
    PRIMARY KEY (grant_id, key)
) STRICT;

-- +goose Down
DROP TABLE grant_budget_use;
