package sqlstore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
)

// testSingleUseInBatches states the promise of the batched writes (batchrows.go) as a property:
// whatever writes share a batch, and on however many replicas of one database, an id is used up
// by exactly one write; a write refused as a replay leaves nothing behind (no event, none of its
// other ids); every accepted write has its event, and the chain verifies.
func testSingleUseInBatches(t *testing.T, dsn string) {
	replicas := []*Store{mustOpen(t, dsn), mustOpen(t, dsn)}
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	const writes = 300
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	shared := make([]int, writes) // writes with the same shared id contend for it
	for i := range shared {
		shared[i] = rng.IntN(writes / 3)
	}
	var mu sync.Mutex
	won := map[int]int{} // shared id → winning write
	accepted := map[string]bool{}
	var wg sync.WaitGroup
	for i := range writes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := replicas[i%len(replicas)]
			own := fmt.Sprintf("own-%d", i)
			uses := []token.SingleUse{{ID: own, ExpiresAt: exp}, {ID: fmt.Sprintf("shared-%d", shared[i]), ExpiresAt: exp}}
			if i%2 == 1 {
				uses[0], uses[1] = uses[1], uses[0]
			}
			ev := audit.New(time.Now(), "req_"+own, audit.ActionTokenIssue)
			ev.ActorType, ev.ActorID, ev.Detail = audit.ActorAgent, "agt_x", own
			var err error
			if i%3 == 0 {
				err = s.AppendEventUsing(ctx, ev, uses)
			} else {
				err = s.RecordIssue(ctx, uses, ev)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				if w, ok := won[shared[i]]; ok {
					t.Errorf("shared id %d used by write %d and write %d", shared[i], w, i)
				}
				won[shared[i]] = i
				accepted[own] = true
			case errors.Is(err, dpop.ErrReplay):
			default:
				t.Errorf("write %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if len(won) != len(distinct(shared)) {
		t.Errorf("%d shared ids used, want %d (each by exactly one write)", len(won), len(distinct(shared)))
	}
	s := replicas[0]
	var evs []audit.Event
	if err := s.ScanEvents(ctx, 0, func(ev *audit.Event) error { evs = append(evs, *ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(accepted) {
		t.Errorf("%d events, want %d (one per accepted write)", len(evs), len(accepted))
	}
	for _, ev := range evs {
		if !accepted[ev.Detail] {
			t.Errorf("event %s of refused write %s", ev.ID, ev.Detail)
		}
	}
	for i := range writes {
		own := fmt.Sprintf("own-%d", i)
		var n int
		if err := s.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM used_jtis WHERE id = $1`, own).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n == 1) != accepted[own] {
			t.Errorf("write %d (accepted %v) left %d rows of its own id", i, accepted[own], n)
		}
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}

func distinct(xs []int) map[int]bool {
	m := map[int]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}
