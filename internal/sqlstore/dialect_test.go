package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

	t.Run("AnyByteChanged", func(t *testing.T) { anyByteChanged(t, mustOpen(t, newDSN(t))) })

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

// anyByteChanged: a change of one byte of any column of any stored event (text, the ext JSON
// included) or of one integer column by one is detected, and the chain verifies once it is undone.
func anyByteChanged(t *testing.T, s *Store) {
	ctx := t.Context()
	for i := range 6 {
		ev := audit.New(time.Now(), "req", audit.ActionTokenIssue)
		ev.ActorType, ev.ActorID, ev.Detail, ev.ClientRequestID = audit.ActorAgent, "agt_1", "event "+strconv.Itoa(i), "client-1"
		ev.TaskID, ev.GrantID, ev.Purpose, ev.Source = "tsk_1", "gr_1", "summarise <the> report", "192.0.2.1"
		ev.Terms = []byte(`{"scopes":["read"],"budget":{"calls":3}}`)
		ev.Chain = []audit.Link{{AgentID: "agt_0", Handle: "root"}, {AgentID: "agt_1"}}
		ev.Call = &audit.Call{Upstream: "ahrefs", Method: "GET", Path: "/v3/x", Status: 200}
		ev.Count, ev.First, ev.Last = 2, time.Now(), time.Now()
		if err := s.AppendEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Fatalf("VerifyChain before: %v", err)
	}
	cols := strings.Fields(strings.ReplaceAll(eventCols, ",", " "))
	r := rand.New(rand.NewPCG(3, 4))
	for range 60 {
		seq, col := int64(1+r.IntN(6)), cols[r.IntN(len(cols))]
		var v any
		if err := s.rdb.QueryRowContext(ctx, `SELECT `+col+` FROM audit_events WHERE seq = $1`, seq).Scan(&v); err != nil {
			t.Fatal(err)
		}
		var changed any
		switch x := v.(type) {
		case int64:
			changed = x + 1000 // a seq moved by 1000 collides with none
		case string, []byte:
			b := []byte(fmt.Sprint(x))
			if bx, ok := x.([]byte); ok {
				b = append([]byte(nil), bx...)
			}
			if len(b) == 0 {
				continue
			}
			i := r.IntN(len(b))
			if b[i] >= 0x80 {
				continue // keep it UTF-8 (PostgreSQL checks)
			}
			b[i] = byte(0x20 + (int(b[i]-0x20)+1+r.IntN(94))%95)
			changed = string(b)
		default:
			t.Fatalf("column %s is a %T", col, v)
		}
		where := fmt.Sprintf("seq %d column %s: %v → %v", seq, col, v, changed)
		key := seq
		if col == "seq" {
			key = changed.(int64)
		}
		if _, err := s.db.ExecContext(ctx, `UPDATE audit_events SET `+col+` = $1 WHERE seq = $2`, changed, seq); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if err := s.VerifyChain(ctx); !errors.Is(err, ErrChainBroken) {
			t.Errorf("%s went unnoticed: %v", where, err)
		}
		if _, err := s.db.ExecContext(ctx, `UPDATE audit_events SET `+col+` = $1 WHERE seq = $2`, v, key); err != nil {
			t.Fatalf("undo %s: %v", where, err)
		}
		if err := s.VerifyChain(ctx); err != nil {
			t.Fatalf("after undoing %s: %v", where, err)
		}
	}
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
