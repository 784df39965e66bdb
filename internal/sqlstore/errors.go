package sqlstore

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// uniqueViolation reports whether err is a unique (or primary key) violation on table.column.
//
// SQLite names the columns in its message ("UNIQUE constraint failed: agents.handle"); the
// PostgreSQL migrations name every such constraint <table>_<column>_key, primary keys included.
func uniqueViolation(err error, table, column string) bool {
	if err == nil {
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		if c := se.Code(); c != sqlite3.SQLITE_CONSTRAINT_UNIQUE && c != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
			return false
		}
		const marker = "UNIQUE constraint failed: "
		msg := se.Error()
		i := strings.Index(msg, marker)
		if i < 0 {
			return false
		}
		cols := msg[i+len(marker):]
		if j := strings.Index(cols, " ("); j >= 0 { // the driver appends " (<code>)"
			cols = cols[:j]
		}
		for c := range strings.SplitSeq(cols, ", ") {
			if c == table+"."+column {
				return true
			}
		}
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505" && pe.ConstraintName == table+"_"+column+"_key"
	}
	return false
}

// foreignKeyViolation reports whether err is a foreign key violation.
func foreignKeyViolation(err error) bool {
	if err == nil {
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	return false
}
