package audit_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ratelimit"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

type testClock struct{ t time.Time }

func (c *testClock) now() time.Time { return c.t }

func newStore(t *testing.T) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type sourceKey struct{}

func sourceOf(ctx context.Context) string { s, _ := ctx.Value(sourceKey{}).(string); return s }

func denial(clk *testClock, action, reason string) audit.Event {
	ev := audit.New(clk.now(), fmt.Sprintf("req_%d", clk.t.UnixNano()), action)
	ev.ActorType, ev.Reason, ev.Detail = audit.ActorAnonymous, reason, "refused: "+reason
	return ev
}

// count is how many requests an event stands for.
func count(ev audit.Event) int64 { return max(ev.Count, 1) }

// TestAggregatorKeepsEveryCount is the promise of the aggregator, for random floods: every
// anonymous denial is accounted for (the counts of the rows written add up to the denials
// made, per source, action and reason), fewer rows are written than denials made, every other
// event is written as it is, and the chain verifies.
func TestAggregatorKeepsEveryCount(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 9))
			s := newStore(t)
			clk := &testClock{t: time.Date(2031, 5, 6, 7, 0, 0, 0, time.UTC)}
			window := time.Minute
			agg := audit.NewAggregator(audit.AggregatorConfig{Store: s, Window: window, MaxKeys: 1 + rng.IntN(20),
				PerSource: ratelimit.New(float64(1+rng.IntN(5)), 1+rng.IntN(5), 0, clk.now), Source: sourceOf, Now: clk.now})
			type key struct{ source, action, reason string }
			made := map[key]int64{}
			others := 0
			n := 300 + rng.IntN(700)
			for range n {
				clk.t = clk.t.Add(time.Duration(rng.IntN(int(2 * time.Second))))
				src := fmt.Sprintf("192.0.2.%d", rng.IntN(4))
				ctx := context.WithValue(t.Context(), sourceKey{}, src)
				action := []string{audit.ActionTokenDeny, audit.ActionAgentRegister, audit.ActionResourceDeny}[rng.IntN(3)]
				reason := []string{"malformed", "dpop", "signature"}[rng.IntN(3)]
				ev := denial(clk, action, reason)
				if rng.IntN(10) == 0 { // someone known: written as it is
					ev.ActorType, ev.ActorID = audit.ActorAgent, "agt_x"
					others++
				} else {
					made[key{src, action, reason}]++
				}
				if err := agg.AppendEvent(ctx, ev); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(50) == 0 {
					agg.Flush(t.Context(), false)
				}
			}
			agg.Flush(t.Context(), true)
			if agg.Pending() != 0 {
				t.Errorf("%d keys pending after Flush(all)", agg.Pending())
			}
			evs, err := s.ListEvents(t.Context(), audit.Filter{Limit: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			got := map[key]int64{}
			gotOthers := 0
			for _, ev := range evs {
				if ev.ActorType != audit.ActorAnonymous {
					gotOthers++
					continue
				}
				if ev.Source == "" {
					t.Errorf("anonymous denial %s without its source", ev.ID)
				}
				if ev.Count > 0 && (ev.First.IsZero() || ev.Last.Before(ev.First)) {
					t.Errorf("aggregated event %s: first %v, last %v", ev.ID, ev.First, ev.Last)
				}
				got[key{ev.Source, ev.Action, ev.Reason}] += count(ev)
			}
			if gotOthers != others {
				t.Errorf("%d events of known actors written, want %d", gotOthers, others)
			}
			for k, want := range made {
				if got[k] != want {
					t.Errorf("%v: rows count %d denials, want %d", k, got[k], want)
				}
			}
			if len(got) != len(made) {
				t.Errorf("rows for %d keys, want %d", len(got), len(made))
			}
			if anon := len(evs) - others; anon >= n-others {
				t.Errorf("%d rows for %d anonymous denials: nothing was aggregated", anon, n-others)
			}
			if err := s.VerifyChain(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestAggregatorFlood: of 1,000 denials from one address in one window, those within the
// per-address rate are written one by one and the rest are one row per kind of denial; without
// a rate each is written.
func TestAggregatorFlood(t *testing.T) {
	for _, tc := range []struct {
		name      string
		perSource audit.Limiter
		reasons   int
		wantRows  int
	}{
		{"one reason", ratelimit.New(1, 10, 0, nil), 1, 10 + 1},
		{"three reasons", ratelimit.New(1, 10, 0, nil), 3, 10 + 3},
		{"no rate", nil, 3, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			clk := &testClock{t: time.Date(2031, 5, 6, 7, 0, 0, 0, time.UTC)}
			agg := audit.NewAggregator(audit.AggregatorConfig{Store: s, PerSource: tc.perSource, Source: sourceOf, Now: clk.now})
			ctx := context.WithValue(t.Context(), sourceKey{}, "198.51.100.7")
			for i := range 1000 {
				clk.t = clk.t.Add(time.Millisecond)
				if err := agg.AppendEvent(ctx, denial(clk, audit.ActionTokenDeny, fmt.Sprint("reason-", i%tc.reasons))); err != nil {
					t.Fatal(err)
				}
			}
			if n := agg.Flush(t.Context(), false); n != 0 {
				t.Errorf("Flush of closed windows wrote %d events inside the window", n)
			}
			agg.Flush(t.Context(), true)
			if rows, total := rowsAndCount(t, s); rows != tc.wantRows || total != 1000 {
				t.Errorf("%d rows counting %d denials, want %d rows counting 1000", rows, total, tc.wantRows)
			}
		})
	}
}

// TestAggregatorBoundedKeys: however many addresses send denials, at most MaxKeys keys are
// pending, and none is lost.
func TestAggregatorBoundedKeys(t *testing.T) {
	s := newStore(t)
	clk := &testClock{t: time.Date(2031, 5, 6, 7, 0, 0, 0, time.UTC)}
	agg := audit.NewAggregator(audit.AggregatorConfig{Store: s, MaxKeys: 50, Source: sourceOf, Now: clk.now,
		PerSource: ratelimit.New(1, 1, 0, clk.now)})
	for i := range 500 {
		ctx := context.WithValue(t.Context(), sourceKey{}, fmt.Sprintf("2001:db8:%x::/64", i))
		for range 2 { // the second is past the address's rate: counted
			if err := agg.AppendEvent(ctx, denial(clk, audit.ActionTokenDeny, "dpop")); err != nil {
				t.Fatal(err)
			}
		}
		if p := agg.Pending(); p > 50 {
			t.Fatalf("%d keys pending, want at most 50", p)
		}
	}
	agg.Flush(t.Context(), true)
	if _, total := rowsAndCount(t, s); total != 1000 {
		t.Errorf("rows count %d denials, want 1000", total)
	}
}

// rowsAndCount is how many events s holds and how many requests they stand for.
func rowsAndCount(t *testing.T, s *sqlstore.Store) (int, int64) {
	t.Helper()
	evs, err := s.ListEvents(t.Context(), audit.Filter{Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, ev := range evs {
		total += count(ev)
	}
	return len(evs), total
}
