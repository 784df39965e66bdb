package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	t.Run("GroupCommit", func(t *testing.T) { testGroupCommit(t, newDSN) })
	t.Run("TwoReplicasOneChain", func(t *testing.T) { testTwoReplicas(t, newDSN(t)) })
	t.Run("SingleUseInBatches", func(t *testing.T) { testSingleUseInBatches(t, newDSN(t)) })
	t.Run("TasksInBatches", func(t *testing.T) { testTasksInBatches(t, newDSN(t), false) })
	t.Run("TasksInBatchesSomeMissing", func(t *testing.T) { testTasksInBatches(t, newDSN(t), true) })
	t.Run("RevokeWhileStarting", func(t *testing.T) { testRevokeWhileStarting(t, newDSN(t)) })

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

// testTwoReplicas: two stores on one database (two replicas, or a server and the CLI), each
// with its own group-commit writer, append concurrently;
// the one chain stays gapless, every event is on it once, and it verifies.
func testTwoReplicas(t *testing.T, dsn string) {
	a, b := mustOpen(t, dsn), mustOpen(t, dsn)
	ctx := t.Context()
	const per = 40
	var wg sync.WaitGroup
	errs := make(chan error, 4*per)
	for _, s := range []*Store{a, b} {
		for g := range 4 {
			wg.Go(func() {
				for i := range per / 4 {
					ev := audit.New(time.Now(), fmt.Sprintf("req_%d_%d", g, i), audit.ActionTokenDeny)
					ev.ActorType = audit.ActorAnonymous
					errs <- s.AppendEvent(ctx, ev)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	evs, err := a.ListEvents(ctx, audit.Filter{Limit: 1000, Ascending: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2*per {
		t.Fatalf("%d events on the chain, want %d", len(evs), 2*per)
	}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
	}
	if err := b.VerifyChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustOpen(t testing.TB, dsn string, opts ...Option) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := Open(ctx, dsn, opts...)
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

// holdChain takes the write lock the committer needs (SQLite's one writer connection, the
// PostgreSQL chain lock) so that appends queue up behind it; release lets them through.
func holdChain(t *testing.T, s *Store) (release func()) {
	t.Helper()
	tx, err := s.db.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatalf("hold the chain: %v", err)
	}
	if s.dialect == DialectPostgres {
		if _, err := tx.ExecContext(t.Context(), `SELECT pg_advisory_xact_lock($1)`, chainLockID); err != nil {
			t.Fatalf("hold the chain: %v", err)
		}
	}
	return func() { tx.Rollback() }
}

// waitFor waits until cond holds. It asserts nothing about time: the test fails only by timing
// out if cond never holds.
func waitFor(cond func() bool) {
	for !cond() {
		time.Sleep(time.Millisecond)
	}
}

// testGroupCommit queues appends behind a held write lock, so the batches are known: a batch
// commits its events in queue order, a reused id is refused alone, a caller that gives up while
// queued is never written, one that gives up while its batch commits does not stop it, and
// Close commits what is queued.
func testGroupCommit(t *testing.T, newDSN func(t *testing.T) string) {
	dsn := newDSN(t)
	s := mustOpen(t, dsn)
	batches := make(chan int, 16)
	s.gc.batchStarted = func(n int) { batches <- n }
	ctx := t.Context()
	// appendAsync starts an append and waits until it is queued (queued more than before).
	appendAsync := func(ctx context.Context, ev audit.Event, queuedBefore int) chan error {
		done := make(chan error, 1)
		go func() { done <- s.AppendEvent(ctx, ev) }()
		waitFor(func() bool { return len(s.gc.reqs) > queuedBefore })
		return done
	}
	newEv := func(detail string) audit.Event {
		ev := audit.New(time.Now(), ids.New("req"), audit.ActionTokenDeny)
		ev.ID, ev.Detail = ids.New("evt"), detail
		return ev
	}
	first := newEv("first")
	if err := s.AppendEvent(ctx, first); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	if n := <-batches; n != 1 {
		t.Fatalf("a lone append was committed in a batch of %d", n)
	}

	release := holdChain(t, s)
	// A is taken by the writer, which then waits for the lock; its caller gives up.
	actx, cancelA := context.WithCancel(ctx)
	a := newEv("a")
	aDone := make(chan error, 1)
	go func() { aDone <- s.AppendEvent(actx, a) }()
	if n := <-batches; n != 1 {
		t.Fatalf("batch of %d, want A alone", n)
	}
	cancelA()
	if err := <-aDone; !errors.Is(err, context.Canceled) {
		t.Errorf("A, given up while its batch commits: %v, want context.Canceled", err)
	}
	// B, C, a reused id, D queue behind it, and E, which gives up while queued.
	b, c, dup, d, e := newEv("b"), newEv("c"), newEv("dup"), newEv("d"), newEv("e")
	dup.ID = first.ID
	bDone := appendAsync(ctx, b, 0)
	cDone := appendAsync(ctx, c, 1)
	dupDone := appendAsync(ctx, dup, 2)
	ectx, cancelE := context.WithCancel(ctx)
	eDone := appendAsync(ectx, e, 3)
	dDone := appendAsync(ctx, d, 4)
	cancelE()
	if err := <-eDone; !errors.Is(err, context.Canceled) {
		t.Errorf("E, given up while queued: %v, want context.Canceled", err)
	}
	release()
	if n := <-batches; n != 4 {
		t.Errorf("second batch of %d, want B, C, the reused id and D (E gave up)", n)
	}
	for name, ch := range map[string]chan error{"B": bDone, "C": cDone, "D": dDone} {
		if err := <-ch; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := <-dupDone; !errors.Is(err, audit.ErrUnavailable) {
		t.Errorf("the reused id: %v, want an error wrapping audit.ErrUnavailable", err)
	}

	// Close commits what is queued, then refuses.
	release = holdChain(t, s)
	f, g, h := newEv("f"), newEv("g"), newEv("h")
	fDone := make(chan error, 1)
	go func() { fDone <- s.AppendEvent(ctx, f) }()
	<-batches // F taken
	gDone := appendAsync(ctx, g, 0)
	hDone := appendAsync(ctx, h, 1)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	waitFor(func() bool { s.gc.mu.RLock(); defer s.gc.mu.RUnlock(); return s.gc.closed })
	if err := s.AppendEvent(ctx, newEv("late")); err == nil {
		t.Errorf("AppendEvent after Close succeeded")
	}
	release()
	for name, ch := range map[string]chan error{"F": fDone, "G": gDone, "H": hDone, "Close": closed} {
		if err := <-ch; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	s = mustOpen(t, dsn)
	evs, err := s.ListEvents(ctx, audit.Filter{Ascending: true, Limit: 100})
	if err != nil {
		t.Fatalf("ListEvents: %v", err)
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Detail)
	}
	if want := []string{"first", "a", "b", "c", "d", "f", "g", "h"}; !slices.Equal(got, want) {
		t.Errorf("events on record %q, want %q", got, want)
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}
