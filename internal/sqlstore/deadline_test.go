package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// TestMarkUnavailable: an error that means the database could not be reached or did not answer
// matches apperr.ErrUnavailable and still unwraps to the driver's error; a refusal of what was
// asked (a constraint, a malformed statement) does not; the sentinels database/sql compares
// with == pass unchanged.
func TestMarkUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"deadline", context.DeadlineExceeded, true},
		{"refused connection", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{"connection lost mid-answer", io.ErrUnexpectedEOF, true},
		{"bad connection", driver.ErrBadConn, true},
		{"postgres connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"postgres shutting down", &pgconn.PgError{Code: "57P01"}, true},
		{"postgres too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"postgres serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"postgres read-only after fail-over", &pgconn.PgError{Code: "25006"}, true},
		{"postgres unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"postgres syntax error", &pgconn.PgError{Code: "42601"}, false},
		{"no rows", sql.ErrNoRows, false},
		{"anything else", errors.New("unable to encode"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := markUnavailable(tc.err)
			if errors.Is(got, apperr.ErrUnavailable) != tc.want {
				t.Errorf("markUnavailable(%v) matches ErrUnavailable: %v, want %v", tc.err, !tc.want, tc.want)
			}
			if !errors.Is(got, tc.err) {
				t.Errorf("markUnavailable(%v) = %v, which does not unwrap to it", tc.err, got)
			}
			if again := markUnavailable(got); again != got {
				t.Errorf("marked twice: %v", again)
			}
		})
	}
	for _, e := range []error{nil, io.EOF, driver.ErrSkip, driver.ErrRemoveArgument} {
		if got := markUnavailable(e); got != e {
			t.Errorf("markUnavailable(%v) = %v, want it unchanged", e, got)
		}
	}
}

// TestSQLiteLockedOut: a write that waits for another process's lock longer than the store's
// timeout fails with an error wrapping apperr.ErrUnavailable (and the lock's holder finishes
// unharmed); once the lock is released the store writes again.
func TestSQLiteLockedOut(t *testing.T) {
	dsn := newSQLiteDSN(t)
	s, err := Open(t.Context(), dsn, WithTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), `BEGIN EXCLUSIVE`); err != nil {
		t.Fatal(err)
	}
	write := func() error {
		return s.tx(t.Context(), false, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(t.Context(), `DELETE FROM users WHERE id = 'none'`)
			return err
		})
	}
	if err := write(); !errors.Is(err, apperr.ErrUnavailable) {
		t.Errorf("write while another process holds the lock: %v, want an error wrapping apperr.ErrUnavailable", err)
	}
	if _, err := conn.ExecContext(t.Context(), `COMMIT`); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := write(); err != nil {
		t.Errorf("write after the lock was released: %v", err)
	}
}

// TestQueryPastDeadline: a statement that runs longer than the store's timeout is cancelled and
// fails with an error wrapping apperr.ErrUnavailable and context.DeadlineExceeded; the pool goes
// on serving.
func TestQueryPastDeadline(t *testing.T) {
	for _, d := range dialects(t) {
		t.Run(d.name, func(t *testing.T) {
			// 2 s, not less: every call has this deadline, the connection handshake too, and on
			// a loaded CI machine that took longer than 300 ms.
			s, err := Open(t.Context(), d.dsn(t), WithTimeout(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			slow := d.slow
			var n int64
			err = s.rdb.QueryRowContext(t.Context(), slow).Scan(&n)
			if !errors.Is(err, apperr.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("a statement past the deadline: %v, want an error wrapping apperr.ErrUnavailable and context.DeadlineExceeded", err)
			}
			if err := s.rdb.QueryRowContext(t.Context(), `SELECT 1`).Scan(&n); err != nil || n != 1 {
				t.Errorf("the next statement: %d, %v", n, err)
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Errorf("Ping: %v", err)
			}
		})
	}
}

type dialectCase struct {
	name string
	dsn  func(t *testing.T) string
	slow string // a statement that runs for seconds
}

// dialects are SQLite, and PostgreSQL when MANDATE_TEST_POSTGRES is set.
func dialects(t *testing.T) []dialectCase {
	out := []dialectCase{{DialectSQLite, newSQLiteDSN,
		`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c`}}
	if os.Getenv(pgtest.EnvVar) != "" {
		out = append(out, dialectCase{DialectPostgres, func(t *testing.T) string { return pgtest.URL(t) }, `SELECT 1 FROM pg_sleep(30)`})
	} else {
		t.Log(pgtest.EnvVar + " not set: PostgreSQL cases skipped")
	}
	return out
}
