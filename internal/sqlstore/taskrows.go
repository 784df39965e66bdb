package sqlstore

import (
	"fmt"

	"github.com/mandate-dev/mandate/internal/delegation"
)

// Tasks in a batch. An exchange's write is a simple write (see batchrows.go) with a task: the
// grant and the parent task must still be active, then its single-use ids are used up, the task
// row inserted and its events appended. A run of them costs a handful of statements whatever its
// length — one status query for every grant of the run, one for every parent, one multi-row
// INSERT for the tasks — so that on PostgreSQL a batch is a few round trips under the chain
// lock instead of several per exchange (which, one exchange after another, halved the rate).
//
// The checks are made in the batch's transaction, after every write queued before it and under
// the chain lock that a grant's or task's revocation also takes: a task cannot start under a
// grant or parent whose revocation cascade has already run.

// taskWrite is the task a simple write creates.
type taskWrite struct {
	t delegation.Task
	a authority
}

// taskStmtSQL is the multi-row statement of kind for rows rows: "grant" and "parent" read the
// status of rows ids, "task" inserts rows tasks.
func taskStmtSQL(kind string, rows int) string {
	switch kind {
	case "grant":
		return `SELECT id, status FROM grants WHERE id IN ` + placeholders(1, rows)
	case "parent":
		return `SELECT id, status FROM tasks WHERE id IN ` + placeholders(1, rows)
	}
	return `INSERT INTO tasks (` + taskCols + `) VALUES ` + placeholders(rows, taskColCount)
}

// taskColCount is the number of columns in taskCols.
const taskColCount = 18

var taskStmtKinds = []string{"grant", "parent", "task"}

// prepareTaskRows prepares taskStmtSQL's statements, like prepareRows.
func (s *Store) prepareTaskRows() error {
	for _, kind := range taskStmtKinds {
		for _, n := range chunkSizes {
			st, err := s.db.Prepare(s.sqlFor(taskStmtSQL(kind, n)))
			if err != nil {
				return fmt.Errorf("prepare %s × %d: %w", kind, n, err)
			}
			s.rowStmts[rowStmtKey{kind, n}] = st
		}
	}
	return nil
}

// checkTasks refuses, before anything of the run is written, each task write of run whose grant
// or parent task is missing (delegation.ErrNotFound) or no longer active
// (delegation.ErrNotActive). Writes refused already are left alone.
func (w *batchWriter) checkTasks(run []*appendReq) error {
	var grants, parents []string
	seen := map[string]bool{}
	add := func(ids *[]string, id string) {
		if !seen[id] {
			seen[id] = true
			*ids = append(*ids, id)
		}
	}
	for _, r := range run {
		if tw := r.simple.task; tw != nil && r.refused == nil {
			add(&grants, tw.t.GrantID)
			if tw.t.ParentID != "" {
				add(&parents, tw.t.ParentID)
			}
		}
	}
	if len(grants) == 0 {
		return nil
	}
	grantStatus, err := w.statuses("grant", grants)
	if err != nil {
		return err
	}
	parentStatus, err := w.statuses("parent", parents)
	if err != nil {
		return err
	}
	for _, r := range run {
		tw := r.simple.task
		if tw == nil || r.refused != nil {
			continue
		}
		err := activeIn(grantStatus, "grant", tw.t.GrantID, string(delegation.GrantActive))
		if err == nil && tw.t.ParentID != "" {
			err = activeIn(parentStatus, "parent task", tw.t.ParentID, string(delegation.TaskActive))
		}
		if err != nil {
			r.refused = refuse(err)
		}
	}
	return nil
}

// statuses reads the status of every id (kind "grant" or "parent"), by id.
func (w *batchWriter) statuses(kind string, ids []string) (map[string]string, error) {
	got := make(map[string]string, len(ids))
	err := chunks(len(ids), func(from, to int) error {
		st, err := w.rowStmt(kind, to-from)
		if err != nil {
			return err
		}
		args := make([]any, 0, to-from)
		for _, id := range ids[from:to] {
			args = append(args, id)
		}
		rows, err := st.QueryContext(w.ctx, args...)
		if err != nil {
			return fmt.Errorf("read %s status: %w", kind, err)
		}
		defer rows.Close()
		for rows.Next() {
			var id, status string
			if err := rows.Scan(&id, &status); err != nil {
				return fmt.Errorf("read %s status: %w", kind, err)
			}
			got[id] = status
		}
		return rows.Err()
	})
	return got, err
}

// activeIn is requireActive's answer for id from statuses read before.
func activeIn(statuses map[string]string, what, id, active string) error {
	status, ok := statuses[id]
	if !ok {
		return fmt.Errorf("%s %s: %w", what, id, delegation.ErrNotFound)
	}
	return activeStatus(what, id, status, active)
}

// activeStatus is delegation.ErrNotActive, wrapped, unless status is active.
func activeStatus(what, id, status, active string) error {
	if status != active {
		return fmt.Errorf("%s %s is %s: %w", what, id, status, delegation.ErrNotActive)
	}
	return nil
}

// insertTasks inserts the task of every write of run that is not refused. A missing principal
// or agent fails the statement: the batch is then retried one write at a time (see
// commitBatch), where the write that names it is refused on its own (runTask).
func (w *batchWriter) insertTasks(run []*appendReq) error {
	var rows [][]any
	for _, r := range run {
		if tw := r.simple.task; tw != nil && r.refused == nil {
			rows = append(rows, tw.args())
		}
	}
	return chunks(len(rows), func(from, to int) error {
		st, err := w.rowStmt("task", to-from)
		if err != nil {
			return err
		}
		args := make([]any, 0, taskColCount*(to-from))
		for _, a := range rows[from:to] {
			args = append(args, a...)
		}
		if _, err := st.ExecContext(w.ctx, args...); err != nil {
			return fmt.Errorf("insert tasks: %w", err)
		}
		return nil
	})
}

// args are the task row's values, in taskCols order.
func (tw *taskWrite) args() []any {
	t, a := &tw.t, &tw.a
	return []any{t.ID, t.GrantID, nullString(t.ParentID), t.RootID, t.Depth, t.PrincipalID, t.AgentID,
		t.InstanceJKT, t.Purpose, a.scopes, a.resources, a.details, a.budget, string(t.Status),
		nanos(t.CreatedAt), nanos(t.ExpiresAt), nanos(t.EndedAt), t.KeyJKT}
}

// runTask checks and inserts tw on its own, before its write's ids are used up; a refusal has
// written nothing.
func (w *batchWriter) runTask(tw *taskWrite) error {
	t := &tw.t
	if err := requireActive(w.ctx, w.tx, "grants", "grant", t.GrantID, string(delegation.GrantActive)); err != nil {
		return refuseIf(err, delegation.ErrNotFound, delegation.ErrNotActive)
	}
	if t.ParentID != "" {
		if err := requireActive(w.ctx, w.tx, "tasks", "parent task", t.ParentID, string(delegation.TaskActive)); err != nil {
			return refuseIf(err, delegation.ErrNotFound, delegation.ErrNotActive)
		}
	}
	return nil
}

// insertTask inserts tw on its own: a missing principal or agent is a refusal.
func (w *batchWriter) insertTask(tw *taskWrite) error {
	_, err := w.s.stmt(w.ctx, w.tx, stmtInsertTask).ExecContext(w.ctx, tw.args()...)
	if foreignKeyViolation(err) {
		return fmt.Errorf("principal %s or agent %s: %w", tw.t.PrincipalID, tw.t.AgentID, delegation.ErrNotFound)
	}
	return err
}
