package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/mandate-dev/mandate/internal/delegation"
)

// One conditional upsert per counter: it counts one unit and returns the new count, or no row
// when the counter is at its max. PostgreSQL's ON CONFLICT DO UPDATE locks the row and evaluates
// the WHERE on its latest version, so concurrent calls on any replica never pass the max.
const (
	useGrantBudget = `INSERT INTO grant_budget_use (grant_id, key, used) VALUES ($1, $2, 1)
		ON CONFLICT (grant_id, key) DO UPDATE SET used = grant_budget_use.used + 1
		WHERE grant_budget_use.used < $3
		RETURNING used`
	useTaskBudget = `INSERT INTO task_budget_use (task_id, key, used) VALUES ($1, $2, 1)
		ON CONFLICT (task_id, key) DO UPDATE SET used = task_budget_use.used + 1
		WHERE task_budget_use.used < $3
		RETURNING used`
)

// UseBudgets counts one unit against every counter in one transaction, or none: the first
// counter at its max rolls back the others and is returned in a *delegation.BudgetExhaustedError.
// Counters are taken in one fixed order (grants, then tasks, by id and key) so that two calls
// sharing rows lock them in the same order and never deadlock on PostgreSQL; SQLite has a
// single writer. A counter of an unknown grant or task gives delegation.ErrNotFound.
func (s *Store) UseBudgets(ctx context.Context, counters []delegation.BudgetCounter) error {
	for _, c := range counters {
		if (c.Grant == "") == (c.Task == "") {
			return fmt.Errorf("use budget %s: a counter names a grant or a task, not %q and %q", c.Key, c.Grant, c.Task)
		}
		if c.Max < 1 {
			return &delegation.BudgetExhaustedError{Counter: c}
		}
	}
	if len(counters) == 0 {
		return nil
	}
	ordered := slices.Clone(counters)
	slices.SortFunc(ordered, func(a, b delegation.BudgetCounter) int {
		return cmp.Or(cmp.Compare(b.Grant, a.Grant), cmp.Compare(a.Task, b.Task), cmp.Compare(a.Key, b.Key))
	})
	return s.tx(ctx, false, func(tx *sql.Tx) error {
		for _, c := range ordered {
			query, id := useTaskBudget, c.Task
			if c.Grant != "" {
				query, id = useGrantBudget, c.Grant
			}
			var used int64
			err := tx.QueryRowContext(ctx, query, id, c.Key, c.Max).Scan(&used)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return &delegation.BudgetExhaustedError{Counter: c}
			case foreignKeyViolation(err):
				return fmt.Errorf("use budget %s of %s%s: %w", c.Key, c.Grant, c.Task, delegation.ErrNotFound)
			case err != nil:
				return fmt.Errorf("use budget %s of %s%s: %w", c.Key, c.Grant, c.Task, err)
			}
		}
		return nil
	})
}

// GrantBudgetUsed returns what the grant's counters have counted, by key (empty when nothing
// was counted yet).
func (s *Store) GrantBudgetUsed(ctx context.Context, grantID string) (map[string]int64, error) {
	type use struct {
		key  string
		used int64
	}
	rows, err := queryAll(ctx, s.rdb, "budget of grant "+grantID, func(r rowScanner) (use, error) {
		var u use
		err := r.Scan(&u.key, &u.used)
		return u, err
	}, `SELECT key, used FROM grant_budget_use WHERE grant_id = $1`, grantID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(rows))
	for _, u := range rows {
		out[u.key] = u.used
	}
	return out, nil
}
