package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Statements prepared once per store. Preparing is a large part of a small statement's cost
// (modernc.org/sqlite compiles SQL to bytecode on every Exec that is not prepared); the
// statements of every write on the hot path are prepared here, and tx.StmtContext reuses the
// connection's prepared copy instead of preparing again.
type stmtKey int

const (
	stmtInsertEvent stmtKey = iota
	stmtReadTail
	stmtUse
	stmtUnuse
	stmtInsertTask
	stmtCount
)

var stmtSQL = [stmtCount]string{
	stmtInsertEvent: `INSERT INTO audit_events (` + eventCols + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
			$21, $22, $23, $24, $25)`,
	stmtReadTail: `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`,
	stmtUse: `INSERT INTO used_jtis (id, expires_at) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
		WHERE used_jtis.expires_at <= $3`,
	stmtUnuse: `DELETE FROM used_jtis WHERE id = $1`,
	stmtInsertTask: `INSERT INTO tasks (` + taskCols + `)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
}

// prepare prepares every statement of stmtSQL on the writer pool.
func (s *Store) prepare(ctx context.Context) error {
	for k, q := range stmtSQL {
		st, err := s.db.PrepareContext(ctx, s.sqlFor(q))
		if err != nil {
			s.closeStmts()
			return fmt.Errorf("prepare statement %d: %w", k, err)
		}
		s.stmts[k] = st
	}
	if err := s.prepareRows(ctx); err != nil {
		s.closeStmts()
		return err
	}
	if err := s.prepareTaskRows(); err != nil {
		s.closeStmts()
		return err
	}
	return nil
}

func (s *Store) closeStmts() error {
	var errs []error
	for i, st := range s.stmts {
		if st != nil {
			errs = append(errs, st.Close())
			s.stmts[i] = nil
		}
	}
	for k, st := range s.rowStmts {
		errs = append(errs, st.Close())
		delete(s.rowStmts, k)
	}
	return errors.Join(errs...)
}

// stmt returns the prepared statement k for use in tx.
func (s *Store) stmt(ctx context.Context, tx *sql.Tx, k stmtKey) *sql.Stmt {
	return tx.StmtContext(ctx, s.stmts[k])
}

// sqlFor is q as this store's dialect prepares it. On SQLite, a query whose $N placeholders run
// $1, $2, … in order gets anonymous ? placeholders instead: modernc.org/sqlite binds every
// parameter by looking its name up in a list (sqlite3_bind_parameter_name), which is quadratic
// in a multi-row statement's hundreds of parameters — a fifth of a batch's CPU — while anonymous
// ones have no name to look up. Any other query is left as it is.
func (s *Store) sqlFor(q string) string {
	if s.dialect != DialectSQLite {
		return q
	}
	var b strings.Builder
	next := 1
	for i := 0; i < len(q); i++ {
		if q[i] != '$' {
			b.WriteByte(q[i])
			continue
		}
		j := i + 1
		for j < len(q) && q[j] >= '0' && q[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(q[i+1 : j]); err != nil || n != next {
			return q
		}
		next++
		b.WriteByte('?')
		i = j - 1
	}
	return b.String()
}
