package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
)

// Multi-row writes of a batch. Most writes on the hot path are the same shape — use up a few
// single-use ids, append one event — so the writer does a run of them with a few multi-row
// statements instead of three statements each: one INSERT … RETURNING for every id of the run
// (the ids it returns are the fresh ones), one INSERT for every event of the run. On PostgreSQL
// that makes a batch a handful of round trips under the chain lock, whatever its size; on
// SQLite it saves the per-statement cost. Statements are prepared once per row count, and runs
// are cut into chunks of a few fixed sizes so that only those few are ever prepared.

// simpleWrite is a write of that shape: uses, then evs (as successes, or with their Outcome
// kept) — and an exchange's task, checked before the uses and inserted before the events (see
// taskrows.go).
type simpleWrite struct {
	uses    []token.SingleUse
	evs     []audit.Event
	success bool
	task    *taskWrite
}

// chunkSizes are the row counts of the prepared multi-row statements, largest first; a run is
// cut greedily into chunks of these sizes.
var chunkSizes = []int{64, 16, 4, 1}

// rowStmtKey names a prepared multi-row statement: its kind and row count.
type rowStmtKey struct {
	kind string // "use" or "event"
	rows int
}

// rowStmtSQL is the multi-row statement of kind for rows rows.
func rowStmtSQL(kind string, rows int) string {
	if kind == "use" {
		return `INSERT INTO used_jtis (id, expires_at) VALUES ` + placeholders(rows, 2) + `
			ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
			WHERE used_jtis.expires_at <= $` + strconv.Itoa(rows*2+1) + ` RETURNING id`
	}
	return `INSERT INTO audit_events (` + eventCols + `) VALUES ` + placeholders(rows, 25)
}

// prepareRows prepares every multi-row statement: at open, since on SQLite the writer's one
// connection is busy with the batch when one is needed.
func (s *Store) prepareRows(ctx context.Context) error {
	s.rowStmts = make(map[rowStmtKey]*sql.Stmt)
	for _, kind := range []string{"use", "event"} {
		for _, n := range chunkSizes {
			st, err := s.db.PrepareContext(ctx, s.sqlFor(rowStmtSQL(kind, n)))
			if err != nil {
				return fmt.Errorf("prepare %s × %d: %w", kind, n, err)
			}
			s.rowStmts[rowStmtKey{kind, n}] = st
		}
	}
	return nil
}

// rowStmt returns the prepared multi-row statement of kind for rows rows, in tx.
func (w *batchWriter) rowStmt(kind string, rows int) (*sql.Stmt, error) {
	st := w.s.rowStmts[rowStmtKey{kind, rows}]
	if st == nil {
		return nil, fmt.Errorf("no prepared %s statement for %d rows", kind, rows)
	}
	return w.tx.StmtContext(w.ctx, st), nil
}

// placeholders is "($1, $2), ($3, $4), …" for rows rows of cols columns.
func placeholders(rows, cols int) string {
	var b strings.Builder
	n := 1
	for r := range rows {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := range cols {
			if c > 0 {
				b.WriteString(", ")
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			n++
		}
		b.WriteByte(')')
	}
	return b.String()
}

// chunks calls fn with consecutive [from, to) ranges of n items, sized from chunkSizes.
func chunks(n int, fn func(from, to int) error) error {
	from := 0
	for _, size := range chunkSizes {
		for n-from >= size {
			if err := fn(from, from+size); err != nil {
				return err
			}
			from += size
		}
	}
	return nil
}

// writeSimple writes a run of simple writes. A write whose id was used before (or earlier in
// the run) is refused, having written nothing; the others' events are linked in run order.
// An error is the database's, and not any one write's.
func (w *batchWriter) writeSimple(run []*appendReq) error {
	type use struct {
		id  string
		exp int64
	}
	for _, r := range run {
		r.refused = nil
	}
	if err := w.checkTasks(run); err != nil {
		return err
	}
	var uses []use
	owner := map[string]int{} // id → index in run of the write that uses it
	for i, r := range run {
		if r.refused != nil {
			continue
		}
		for _, u := range r.simple.uses {
			if _, dup := owner[u.ID]; dup {
				r.refused = refuse(fmt.Errorf("use %s: %w", u.ID, dpop.ErrReplay))
				continue
			}
			owner[u.ID] = i
			uses = append(uses, use{u.ID, nanos(u.ExpiresAt)})
		}
	}
	fresh := make(map[string]bool, len(uses))
	now := nanos(w.s.now())
	err := chunks(len(uses), func(from, to int) error {
		st, err := w.rowStmt("use", to-from)
		if err != nil {
			return err
		}
		args := make([]any, 0, 2*(to-from)+1)
		for _, u := range uses[from:to] {
			args = append(args, u.id, u.exp)
		}
		rows, err := st.QueryContext(w.ctx, append(args, now)...)
		if err != nil {
			return fmt.Errorf("use single-use ids: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return fmt.Errorf("use single-use ids: %w", err)
			}
			fresh[id] = true
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	// A write with an id that was not fresh is refused; the ids it did use are given back.
	var giveBack []any
	for _, r := range run {
		replayed := ""
		for _, u := range r.simple.uses {
			if !fresh[u.ID] {
				replayed = u.ID
			}
		}
		if replayed == "" && r.refused == nil {
			continue
		}
		if r.refused == nil {
			r.refused = refuse(fmt.Errorf("use %s: %w", replayed, dpop.ErrReplay))
		}
		for _, u := range r.simple.uses {
			if o, ok := owner[u.ID]; ok && fresh[u.ID] && run[o] == r {
				giveBack = append(giveBack, u.ID)
			}
		}
	}
	if len(giveBack) > 0 {
		q := `DELETE FROM used_jtis WHERE id IN ` + placeholders(1, len(giveBack))
		if _, err := w.tx.ExecContext(w.ctx, q, giveBack...); err != nil {
			return fmt.Errorf("give back single-use ids: %w", err)
		}
	}
	if err := w.insertTasks(run); err != nil {
		return err
	}
	var evs [][]any
	for _, r := range run {
		if r.refused != nil {
			continue
		}
		for _, e := range r.simple.evs { // a copy: a retried batch starts from the original
			if r.simple.success {
				e.Outcome = audit.OutcomeSuccess
			}
			evs = append(evs, linkEvent(&w.tail, &e))
			w.tail.seq, w.tail.hash = e.Seq, e.Hash
		}
	}
	return chunks(len(evs), func(from, to int) error {
		st, err := w.rowStmt("event", to-from)
		if err != nil {
			return err
		}
		args := make([]any, 0, 25*(to-from))
		for _, a := range evs[from:to] {
			args = append(args, a...)
		}
		if _, err := st.ExecContext(w.ctx, args...); err != nil {
			return fmt.Errorf("insert audit events: %w: %w", audit.ErrUnavailable, err)
		}
		return nil
	})
}
