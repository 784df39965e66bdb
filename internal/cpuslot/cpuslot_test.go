package cpuslot_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/cpuslot"
)

// TestNeverMoreThanN: however requests enter, yield, come back and leave, at most n of them hold
// a slot at once while every slot is obtainable (patience long enough never to run out).
func TestNeverMoreThanN(t *testing.T) {
	const n = 3
	l := cpuslot.New(n, time.Hour)
	var inside, most atomic.Int64
	computing := func() func() {
		c := inside.Add(1)
		for {
			m := most.Load()
			if c <= m || most.CompareAndSwap(m, c) {
				break
			}
		}
		return func() { inside.Add(-1) }
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, leave := cpuslot.New(0, 0).Enter(context.Background()) // another limiter's slot is not this one's
			_ = ctx
			leave()
			ctx, leave = l.Enter(context.Background())
			defer leave()
			for range 20 {
				out := computing()
				time.Sleep(10 * time.Microsecond)
				out()
				back := cpuslot.Yield(ctx)
				time.Sleep(10 * time.Microsecond) // waiting: no slot held
				back()
			}
			leave()
			leave() // twice is harmless
		}()
	}
	wg.Wait()
	if m := most.Load(); m > n {
		t.Errorf("%d requests computed at once, want at most %d", m, n)
	}
}

// TestPatience: a request that finds every slot held past the patience goes on without one,
// and then yielding and leaving give back nothing it does not hold.
func TestPatience(t *testing.T) {
	l := cpuslot.New(1, time.Millisecond)
	_, leaveA := l.Enter(context.Background())
	ctx, leaveB := l.Enter(context.Background()) // goes on without a slot
	back := cpuslot.Yield(ctx)
	back() // tries again: A still holds the one slot
	leaveB()
	if got := l.Held(); got != 1 {
		t.Errorf("after B (who held nothing) left, %d slots held, want 1 (A's)", got)
	}
	leaveA()
	if got := l.Held(); got != 0 {
		t.Errorf("after A left, %d slots held, want 0", got)
	}
}

// TestCancelled: a request whose context ends stops waiting for a slot.
func TestCancelled(t *testing.T) {
	l := cpuslot.New(1, time.Hour)
	_, leaveA := l.Enter(context.Background())
	defer leaveA()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() {
		_, leave := l.Enter(ctx)
		leave()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Enter with an ended context waited for a slot")
	}
}

func TestNilLimiter(t *testing.T) {
	var l *cpuslot.Limiter
	ctx, leave := l.Enter(context.Background())
	cpuslot.Yield(ctx)()
	leave()
}
