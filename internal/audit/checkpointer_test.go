package audit_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

func newCheckpointer(t *testing.T, s *sqlstore.Store, clk *testClock, floor *int64) *audit.Checkpointer {
	t.Helper()
	keys, err := audit.NewCheckpointKeys(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return audit.NewCheckpointer(audit.CheckpointerConfig{Store: s, Keys: keys, Issuer: "https://mandate.example",
		Events: 5, Interval: time.Hour, Retention: 24 * time.Hour,
		Floor: func(context.Context) (int64, error) { return *floor, nil }, Now: clk.now})
}

func appendEvents(t *testing.T, s *sqlstore.Store, clk *testClock, n int) {
	t.Helper()
	for range n {
		ev := audit.New(clk.now(), "req", audit.ActionTokenIssue)
		ev.ActorType = audit.ActorSystem
		if err := s.AppendEvent(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// A checkpoint is signed once Events events were written or Interval passed, whichever first,
// and only when the head moved.
func TestCheckpointDue(t *testing.T) {
	clk := &testClock{t: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := newStore(t)
	floor := int64(1 << 62)
	c := newCheckpointer(t, s, clk, &floor)
	ctx := t.Context()
	due := func(want int64) {
		t.Helper()
		cp, ok, err := c.CheckpointIfDue(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if (want == 0) == ok || (ok && cp.Seq != want) {
			t.Fatalf("CheckpointIfDue = seq %d, %v; want seq %d (0: none)", cp.Seq, ok, want)
		}
	}
	due(0) // an empty chain
	appendEvents(t, s, clk, 5)
	due(5) // the first
	appendEvents(t, s, clk, 4)
	due(0) // 4 events, 0s
	appendEvents(t, s, clk, 1)
	due(10) // 5 events
	clk.t = clk.t.Add(2 * time.Hour)
	due(0) // the interval passed, but the head did not move
	appendEvents(t, s, clk, 1)
	due(11) // one event, past the interval
	if _, ok, err := c.Checkpoint(ctx); ok || err != nil {
		t.Errorf("Checkpoint with the head where it was = %v, %v; want none", ok, err)
	}
	rep, ok, err := c.CheckTail(ctx)
	if err != nil || !ok || !rep.OK || rep.LastCheckpoint == nil || rep.LastCheckpoint.Seq != 11 {
		t.Errorf("CheckTail = %+v, %v, %v", rep, ok, err)
	}
}

// Retention removes events older than the retention only up to a signed checkpoint, never the
// last event and never past the floor (what sinks have delivered); the rest verifies from the
// cut, which an audit.prune event records.
func TestRetention(t *testing.T) {
	clk := &testClock{t: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := newStore(t)
	floor := int64(7)
	c := newCheckpointer(t, s, clk, &floor)
	ctx := t.Context()
	var outside []audit.Checkpoint
	for range 3 {
		appendEvents(t, s, clk, 5)
		cp, _, err := c.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		outside = append(outside, cp)
		clk.t = clk.t.Add(time.Hour)
	}
	// seq 1..15, checkpoints at 5, 10, 15 an hour apart. Nothing is old enough yet.
	if n, err := c.Prune(ctx); n != 0 || err != nil {
		t.Fatalf("Prune before the retention = %d, %v", n, err)
	}
	clk.t = clk.t.Add(24 * time.Hour)
	first := func() int64 {
		f, err := s.FirstSeq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	// The floor (seq 7) stops it at the checkpoint of seq 5.
	if n, err := c.Prune(ctx); n != 5 || err != nil || first() != 6 {
		t.Fatalf("Prune with floor 7 = %d, %v, first seq %d; want 5 removed, first 6", n, err, first())
	}
	check := func(wantStart int64, wantBefore int) {
		t.Helper()
		if err := s.VerifyChain(ctx); err != nil {
			t.Fatalf("VerifyChain after pruning: %v", err)
		}
		rep, err := c.Verify(ctx, outside, jose.JSONWebKeySet{})
		if err != nil || !rep.OK || rep.StartsAt == nil || rep.StartsAt.Seq != wantStart || rep.FirstSeq != wantStart+1 || rep.CheckpointsBeforeStart != wantBefore {
			t.Fatalf("Verify after pruning = %+v, %v; want a start after the checkpoint of seq %d, %d before it", rep, err, wantStart, wantBefore)
		}
	}
	check(5, 0)
	evs, err := s.ListEvents(ctx, audit.Filter{Action: audit.ActionAuditPrune})
	if err != nil || len(evs) != 1 || evs[0].Target != "5" || evs[0].Seq != 16 {
		t.Fatalf("audit.prune events = %+v, %v", evs, err)
	}
	// Without the floor: up to the checkpoint of seq 15, but never the last event (the prune
	// event itself is 16, so 15 goes).
	floor = 1 << 62
	if n, err := c.Prune(ctx); n != 10 || err != nil || first() != 16 {
		t.Fatalf("Prune without a floor = %d, %v, first seq %d; want 10 removed, first 16", n, err, first())
	}
	check(15, 2)
	// The chain goes on from where it is.
	appendEvents(t, s, clk, 2)
	check(15, 2)
}
