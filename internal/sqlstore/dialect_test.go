package sqlstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
)

// runDialectTests runs the tests that need raw SQL or several opens of one database. newDSN
// returns the DSN of a new, empty database.
func runDialectTests(t *testing.T, dialect string, newDSN func(t *testing.T) string) {
	t.Run("Dialect", func(t *testing.T) {
		s := mustOpen(t, newDSN(t))
		if got := s.Dialect(); got != dialect {
			t.Errorf("Dialect() = %q, want %q", got, dialect)
		}
		if err := s.Ping(t.Context()); err != nil {
			t.Errorf("Ping: %v", err)
		}
	})

	t.Run("Placeholders", func(t *testing.T) {
		// The queries are written once with $N placeholders (see the package comment): check
		// that out-of-order and repeated placeholders bind by number on this dialect.
		s := mustOpen(t, newDSN(t))
		var a, b, c string
		err := s.rdb.QueryRowContext(t.Context(), `SELECT CAST($2 AS TEXT), CAST($1 AS TEXT), CAST($2 AS TEXT)`, "one", "two").Scan(&a, &b, &c)
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if got := a + "," + b + "," + c; got != "two,one,two" {
			t.Errorf("SELECT $2, $1, $2 with (one, two) = %s, want two,one,two", got)
		}
		if _, err := s.db.ExecContext(t.Context(), `INSERT INTO used_jtis (expires_at, id) VALUES ($2, $1)`, "jti", int64(42)); err != nil {
			t.Fatalf("insert: %v", err)
		}
		var n int64
		err = s.rdb.QueryRowContext(t.Context(), `SELECT expires_at FROM used_jtis WHERE id = $1 OR id = $1 AND expires_at > $2`, "jti", int64(0)).Scan(&n)
		if err != nil || n != 42 {
			t.Errorf("SELECT with $1 twice = %d, %v; want 42", n, err)
		}
	})

	t.Run("Reopen", func(t *testing.T) {
		dsn := newDSN(t)
		s := mustOpen(t, dsn)
		u := principal.User{ID: ids.New("usr"), Name: "alice", CreatedAt: time.Now()}
		if err := s.CreateUser(t.Context(), u, audit.New(time.Now(), "r", audit.ActionUserCreate)); err != nil {
			t.Fatalf("CreateUser: %v", err)
		}
		s.Close()
		s = mustOpen(t, dsn)
		if _, err := s.GetUser(t.Context(), "alice"); err != nil {
			t.Errorf("GetUser after reopening: %v", err)
		}
		if err := s.CreateUser(t.Context(), principal.User{ID: ids.New("usr"), Name: "bob"}, audit.New(time.Now(), "r", audit.ActionUserCreate)); err != nil {
			t.Errorf("CreateUser after reopening: %v", err)
		}
		if err := s.VerifyChain(t.Context()); err != nil {
			t.Errorf("VerifyChain after reopening: %v", err)
		}
	})

	t.Run("DatabaseNewer", func(t *testing.T) {
		dsn := newDSN(t)
		s := mustOpen(t, dsn)
		newest := newestMigration(t, dialect)
		if _, err := s.db.ExecContext(t.Context(), `INSERT INTO goose_db_version (version_id, is_applied) VALUES ($1, $2)`,
			newest+1, true); err != nil {
			t.Fatalf("pretend a newer migration ran: %v", err)
		}
		s.Close()
		s, err := Open(t.Context(), dsn)
		if err == nil {
			s.Close()
			t.Fatalf("Open of a newer database succeeded")
		}
		if !errors.Is(err, ErrDatabaseNewer) {
			t.Errorf("Open: %v, want ErrDatabaseNewer", err)
		}
		for _, want := range []string{strconv.FormatInt(newest, 10), strconv.FormatInt(newest+1, 10), "upgrade mandate"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Open error %q does not say %q", err, want)
			}
		}
	})

	t.Run("TamperDetected", func(t *testing.T) {
		for _, tc := range []struct{ name, sql string }{
			{"changed field", `UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 2`},
			{"changed outcome", `UPDATE audit_events SET outcome = 'success' WHERE seq = 3`},
			{"changed time", `UPDATE audit_events SET time = time + 1 WHERE seq = 1`},
			{"deleted row", `DELETE FROM audit_events WHERE seq = 2`},
			{"relinked", `UPDATE audit_events SET prev_hash = '' WHERE seq = 2`},
			{"rehashed row", `UPDATE audit_events SET hash = prev_hash WHERE seq = 2`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := mustOpen(t, newDSN(t))
				for i := range 4 {
					ev := audit.New(time.Now(), "req", audit.ActionTokenDeny)
					ev.Detail = "event " + strconv.Itoa(i)
					if err := s.AppendEvent(t.Context(), ev); err != nil {
						t.Fatalf("AppendEvent: %v", err)
					}
				}
				if err := s.VerifyChain(t.Context()); err != nil {
					t.Fatalf("VerifyChain before tampering: %v", err)
				}
				if _, err := s.db.ExecContext(t.Context(), tc.sql); err != nil {
					t.Fatalf("tamper: %v", err)
				}
				if err := s.VerifyChain(t.Context()); !errors.Is(err, ErrChainBroken) {
					t.Errorf("VerifyChain after tampering = %v, want ErrChainBroken", err)
				}
			})
		}
	})
}

func mustOpen(t *testing.T, dsn string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := Open(ctx, dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newestMigration(t *testing.T, dialect string) int64 {
	t.Helper()
	fsys, err := migrationFS(dialect)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := fsysReadDir(fsys)
	if err != nil {
		t.Fatal(err)
	}
	var newest int64
	for _, name := range entries {
		v, err := strconv.ParseInt(strings.SplitN(name, "_", 2)[0], 10, 64)
		if err != nil {
			t.Fatalf("migration %s: %v", name, err)
		}
		newest = max(newest, v)
	}
	if newest == 0 {
		t.Fatalf("no %s migrations", dialect)
	}
	return newest
}
