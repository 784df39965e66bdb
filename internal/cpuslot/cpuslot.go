// Package cpuslot bounds how many requests do CPU-bound work at once, so that the goroutines a
// request waits for are not queued behind it.
//
// Under load every token request is CPU work (signatures, JSON) that ends in a wait for the
// store's one writer goroutine. With 64 such requests runnable on 2 cores, that writer — woken
// by the network after each round trip to PostgreSQL, or after SQLite's fsync — waits behind
// all of them for a turn on a core (the Go scheduler has no priorities, and goroutines woken by
// the network poller go to the global run queue, which a busy core looks at only now and then).
// A batch of a dozen round trips then took 40–80 ms instead of 3, and exchanges on PostgreSQL
// ran at a fifth of what the database could take. Letting only a few requests compute at a
// time, and having a request give its slot up while it waits (Yield), keeps the run queues
// short: the writer runs as soon as it is woken, and the cores are still kept busy.
//
// A slot is never a lock: a request that cannot get one within the limiter's patience goes on
// without it, so requests holding slots while blocked somewhere this package does not know of
// cost others at most that patience, never their progress.
package cpuslot

import (
	"context"
	"sync/atomic"
	"time"
)

// Limiter hands out a fixed number of slots.
type Limiter struct {
	slots    chan struct{}
	patience time.Duration
}

// New returns a limiter of n slots (at least 1) whose Enter waits at most patience for one.
func New(n int, patience time.Duration) *Limiter {
	return &Limiter{slots: make(chan struct{}, max(n, 1)), patience: patience}
}

type ctxKey struct{}

// holding is one request's claim on a slot, carried by its context.
type holding struct {
	l    *Limiter
	held atomic.Bool
}

// Enter takes a slot for the request of ctx (waiting at most the limiter's patience, or until
// ctx ends) and returns ctx carrying it and the function that gives it back, which may be
// called more than once. A nil Limiter limits nothing.
func (l *Limiter) Enter(ctx context.Context) (context.Context, func()) {
	if l == nil {
		return ctx, func() {}
	}
	h := &holding{l: l}
	h.take(ctx)
	return context.WithValue(ctx, ctxKey{}, h), h.give
}

// Yield gives up the slot the request of ctx holds, if any, for a wait that needs no CPU (a
// commit, a round trip), and returns the function that takes one again.
func Yield(ctx context.Context) (back func()) {
	h, _ := ctx.Value(ctxKey{}).(*holding)
	if h == nil || !h.held.Load() {
		return func() {}
	}
	h.give()
	return func() { h.take(ctx) }
}

func (h *holding) take(ctx context.Context) {
	select {
	case h.l.slots <- struct{}{}:
		h.held.Store(true)
		return
	default:
	}
	t := time.NewTimer(h.l.patience)
	defer t.Stop()
	select {
	case h.l.slots <- struct{}{}:
		h.held.Store(true)
	case <-t.C:
	case <-ctx.Done():
	}
}

func (h *holding) give() {
	if h.held.CompareAndSwap(true, false) {
		<-h.l.slots
	}
}
