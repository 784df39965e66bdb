package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// testAuditConcurrent appends from many goroutines at once, each a run of events one after the
// other, with audited mutations in between: every caller is released, every event is on record
// once, the sequence has no gap, each goroutine's events are in the order it appended them
// (a caller's next append starts after the last returned), and the chain verifies.
func testAuditConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	const n, each = 64, 20
	sent := make([][]string, n)
	errs := runConcurrently(n, func(i int) error {
		for j := range each {
			ev := newEvent(audit.ActionResourceDeny)
			ev.Detail = fmt.Sprintf("goroutine %d event %d", i, j)
			var err error
			if j%7 == 6 {
				err = s.RevokeToken(ctx, token.RevokedToken{JTI: ids.New("jti"), ExpiresAt: at(time.Hour), RevokedAt: base}, ev)
			} else {
				err = s.AppendEvent(ctx, ev)
			}
			if err != nil {
				return fmt.Errorf("event %d: %w", j, err)
			}
			sent[i] = append(sent[i], ev.ID)
		}
		return nil
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
	evs := allEvents(t, s)
	if len(evs) != n*each {
		t.Fatalf("%d events on record, want %d", len(evs), n*each)
	}
	pos := map[string]int{}
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want %d (no gap, no repeat)", i, ev.Seq, i+1)
		}
		if _, dup := pos[ev.ID]; dup {
			t.Fatalf("event %s on record twice", ev.ID)
		}
		pos[ev.ID] = i
	}
	for g, idsSent := range sent {
		last := -1
		for j, id := range idsSent {
			p, ok := pos[id]
			switch {
			case !ok:
				t.Errorf("goroutine %d event %d (%s) returned nil but is not on record", g, j, id)
			case p <= last:
				t.Errorf("goroutine %d event %d is at seq %d, before its previous event (seq %d)", g, j, p+1, last+1)
			}
			last = p
		}
	}
}

// testAppendBadEvents appends concurrently, some events reusing the id of one already on
// record: exactly those are refused, whatever batch they shared, and every other is written.
func testAppendBadEvents(t *testing.T, s Store) {
	ctx := t.Context()
	first := newEvent(audit.ActionTokenDeny)
	if err := s.AppendEvent(ctx, first); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	const n = 60
	errs := runConcurrently(n, func(i int) error {
		ev := newEvent(audit.ActionTokenDeny)
		if i%5 == 0 {
			ev.ID = first.ID
		}
		return s.AppendEvent(ctx, ev)
	})
	for i, err := range errs {
		if bad := i%5 == 0; bad != (err != nil) {
			t.Errorf("append %d (reused id: %v) returned %v", i, bad, err)
		}
		if err != nil && !errors.Is(err, audit.ErrUnavailable) {
			t.Errorf("append %d: error %v does not wrap audit.ErrUnavailable", i, err)
		}
	}
	if got, want := eventCount(t, s), 1+n-n/5; got != want {
		t.Errorf("%d events on record, want %d", got, want)
	}
}

// RunAuditFaults runs the fail-closed tests, which need the database's DSN to inject faults
// (FailAuditWrites). newStore returns a new, empty store and its DSN.
func RunAuditFaults(t *testing.T, newStore func(t *testing.T) (Store, string)) {
	t.Run("AppendAfterN", func(t *testing.T) {
		t.Parallel()
		s, dsn := newStore(t)
		testAppendAfterN(t, s, dsn)
	})
	t.Run("MutationsRefused", func(t *testing.T) {
		t.Parallel()
		s, dsn := newStore(t)
		testMutationsRefused(t, s, dsn)
	})
}

// testAppendAfterN lets exactly after more audit inserts through, then refuses: of many
// concurrent appends exactly that many succeed, the others are refused with
// audit.ErrUnavailable (a batch with a refused event commits the rest of it), and once the
// fault is lifted appends work again and the chain verifies.
func testAppendAfterN(t *testing.T, s Store, dsn string) {
	ctx := t.Context()
	if err := s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)); err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	const after, n = 7, 40
	restore := FailAuditWrites(t, dsn, after)
	errs := runConcurrently(n, func(int) error { return s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)) })
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, audit.ErrUnavailable):
			t.Errorf("append %d: error %v does not wrap audit.ErrUnavailable", i, err)
		}
	}
	if ok != after {
		t.Errorf("%d appends succeeded, want %d (the fault lets %d through)", ok, after, after)
	}
	if got := eventCount(t, s); got != 1+after {
		t.Errorf("%d events on record, want %d", got, 1+after)
	}
	restore()
	if err := s.AppendEvent(ctx, newEvent(audit.ActionTokenDeny)); err != nil {
		t.Errorf("AppendEvent after the fault was lifted: %v", err)
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}

// testMutationsRefused checks, for audited mutations of every store, that with audit writes
// refused the mutation fails with an error wrapping audit.ErrUnavailable and changes nothing.
func testMutationsRefused(t *testing.T, s Store, dsn string) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	agent, code := mustCreateAgent(t, s, "bot")
	agent = mustClaim(t, s, code, alice.ID)
	g := mustCreateGrant(t, s, newGrant(alice.ID, agent.ID, base))
	FailAuditWrites(t, dsn, 0)
	before := eventCount(t, s)

	jti := ids.New("jti")
	g2 := newGrant(alice.ID, agent.ID, base)
	for _, tc := range []struct {
		name   string
		do     func() error
		intact func() error // nil when the mutation left no trace
	}{
		{"CreateUser", func() error {
			return s.CreateUser(ctx, principal.User{ID: ids.New("usr"), Name: "carol", CreatedAt: base}, newEvent(audit.ActionUserCreate))
		}, func() error {
			if _, err := s.GetUser(ctx, "carol"); err == nil {
				return errors.New("user carol exists")
			}
			return nil
		}},
		{"RevokeToken", func() error {
			return s.RevokeToken(ctx, token.RevokedToken{JTI: jti, ExpiresAt: at(time.Hour), RevokedAt: base}, newEvent(audit.ActionTokenRevoke))
		}, func() error {
			if r, err := s.IsTokenRevoked(ctx, jti); err != nil || r {
				return fmt.Errorf("IsTokenRevoked = %v, %v", r, err)
			}
			return nil
		}},
		{"RecordIssue", func() error {
			return s.RecordIssue(ctx, []token.SingleUse{{ID: "fault:1", ExpiresAt: at(time.Hour)}}, newEvent(audit.ActionTokenIssue))
		}, func() error { return s.Use(ctx, "fault:1", at(time.Hour)) }},
		{"UpdateAgent", func() error {
			_, err := s.UpdateAgent(ctx, agent.ID, func(a *registry.Agent) error {
				a.Status, a.RevokedAt = registry.StatusRevoked, base
				return nil
			}, newEvent(audit.ActionAgentRevoke))
			return err
		}, func() error {
			if a := mustGetAgent(t, s, agent.ID); a.Status != agent.Status {
				return fmt.Errorf("agent status %s, want %s", a.Status, agent.Status)
			}
			return nil
		}},
		{"RevokeGrant", func() error {
			_, err := s.RevokeGrant(ctx, g.ID, base, newEvent("grant.revoke"))
			return err
		}, func() error {
			got, err := s.GetGrant(ctx, g.ID)
			if err != nil {
				return err
			}
			if diff := cmp.Diff(g, got); diff != "" {
				return fmt.Errorf("grant changed (-before +after):\n%s", diff)
			}
			return nil
		}},
		{"CreateGrant", func() error {
			return s.CreateGrant(ctx, g2, newEvent("grant.create"))
		}, func() error {
			if _, err := s.GetGrant(ctx, g2.ID); !errors.Is(err, delegation.ErrNotFound) {
				return fmt.Errorf("GetGrant of the refused grant: %v, want ErrNotFound", err)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if !errors.Is(err, audit.ErrUnavailable) {
				t.Errorf("%s with audit writes refused: error %v, want one wrapping audit.ErrUnavailable", tc.name, err)
			}
			if tc.intact != nil {
				if err := tc.intact(); err != nil {
					t.Errorf("after the refused %s: %v", tc.name, err)
				}
			}
		})
	}
	wantNoNewEvents(t, s, before)
}
