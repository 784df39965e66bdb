package sqlstore

import "testing"

func TestSQLFor(t *testing.T) {
	for _, tc := range []struct{ dialect, in, want string }{
		{DialectSQLite, `INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)`, `INSERT INTO t (a, b) VALUES (?, ?), (?, ?)`},
		{DialectSQLite, `SELECT x FROM t WHERE id IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			`SELECT x FROM t WHERE id IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`},
		{DialectSQLite, `SELECT $2, $1`, `SELECT $2, $1`},                                                   // out of order: bound by number
		{DialectSQLite, `SELECT x FROM t WHERE a = $1 OR b = $1`, `SELECT x FROM t WHERE a = $1 OR b = $1`}, // repeated
		{DialectSQLite, `SELECT $1, $3`, `SELECT $1, $3`},                                                   // a gap
		{DialectSQLite, `SELECT 1`, `SELECT 1`},
		{DialectPostgres, `INSERT INTO t (a) VALUES ($1), ($2)`, `INSERT INTO t (a) VALUES ($1), ($2)`},
	} {
		s := &Store{dialect: tc.dialect}
		if got := s.sqlFor(tc.in); got != tc.want {
			t.Errorf("%s: sqlFor(%q) = %q, want %q", tc.dialect, tc.in, got, tc.want)
		}
	}
}
