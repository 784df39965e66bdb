package audit

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/internal/ids"
)

// Limiter is a rate per key, as internal/ratelimit provides: Allow takes one token of key.
type Limiter interface {
	Allow(key string) (ok bool, retryAfter time.Duration)
}

// AggregatorConfig wires an Aggregator.
type AggregatorConfig struct {
	Store  Store
	Window time.Duration // how long identical denials are counted into one event; 0 = a minute
	// PerSource is the rate of denials written one by one per client address; past it they are
	// counted. nil writes every denial one by one.
	PerSource Limiter
	MaxKeys   int                              // pending (source, action, reason) keys at most; 0 = 10,000
	Source    func(ctx context.Context) string // the request's client address
	Log       *slog.Logger
	Now       func() time.Time
}

// Aggregator is the Store that anonymous denials go through, so that a flood of refusals from
// nobody in particular costs a bounded number of audit rows and still leaves the evidence.
//
// An anonymous denial (ActorType anonymous, Outcome denied) is stamped with its client address
// (Source). Within the per-source rate it is written as usual, so every refusal a person or a
// misconfigured client meets can still be found by its request id. Past the rate, denials are
// counted per (source, action, reason) and window, and each such count is written as one event
// (Count, First, Last, and the last denial's request id, detail and target) when its window
// closes, when Flush is called (at shutdown), or when too many keys are pending. So a flood
// from one address costs at most its rate in rows plus one row per kind of denial and window.
// Every other event passes straight through.
//
// This does not weaken "fail closed" (invariant 7): those events record refusals, where nothing
// was issued, forwarded or changed, so no action waits on their record. The events written still
// go through the store's hash chain like any other, and a denial written one by one returns its
// write error as before.
type Aggregator struct {
	cfg AggregatorConfig

	mu      sync.Mutex
	pending map[aggKey]*aggregate
}

type aggKey struct{ source, action, reason string }

type aggregate struct {
	end   time.Time // the window closes
	count int64     // denials counted, not written
	first time.Time
	last  Event // the latest of them
}

// NewAggregator returns an Aggregator in front of cfg.Store.
func NewAggregator(cfg AggregatorConfig) *Aggregator {
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 10000
	}
	if cfg.Source == nil {
		cfg.Source = func(context.Context) string { return "" }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Aggregator{cfg: cfg, pending: map[aggKey]*aggregate{}}
}

// ListEvents lists from the store (events still being counted are not there yet).
func (a *Aggregator) ListEvents(ctx context.Context, f Filter) ([]Event, error) {
	return a.cfg.Store.ListEvents(ctx, f)
}

// AppendEvent writes ev, or counts it when it repeats an anonymous denial (see Aggregator).
func (a *Aggregator) AppendEvent(ctx context.Context, ev Event) error {
	if ev.ActorType != ActorAnonymous || ev.Outcome != OutcomeDenied || ev.Count != 0 {
		return a.cfg.Store.AppendEvent(ctx, ev)
	}
	if ev.Source == "" {
		ev.Source = a.cfg.Source(ctx)
	}
	if a.cfg.PerSource == nil {
		return a.cfg.Store.AppendEvent(ctx, ev)
	}
	if allowed, _ := a.cfg.PerSource.Allow(ev.Source); allowed {
		return a.cfg.Store.AppendEvent(ctx, ev)
	}
	key := aggKey{ev.Source, ev.Action, ev.Reason}
	now := a.cfg.Now()

	a.mu.Lock()
	g, ok := a.pending[key]
	if ok && now.Before(g.end) {
		g.add(ev)
		a.mu.Unlock()
		return nil
	}
	var due []Event
	if ok { // its window has closed: its count is written now, and a new window opens
		delete(a.pending, key)
		due = g.appendEvent(due, now)
	}
	if len(a.pending) >= a.cfg.MaxKeys {
		due = a.takeLocked(due, now, true)
	}
	g = &aggregate{end: now.Add(a.cfg.Window)}
	g.add(ev)
	a.pending[key] = g
	a.mu.Unlock()

	a.write(ctx, due)
	return nil
}

func (g *aggregate) add(ev Event) {
	if g.count == 0 {
		g.first = ev.Time
	}
	g.count++
	g.last = ev
}

// appendEvent appends g's aggregated event to evs, if it counted any denials.
func (g *aggregate) appendEvent(evs []Event, now time.Time) []Event {
	if g.count == 0 {
		return evs
	}
	ev := g.last
	ev.ID, ev.Time = ids.New("evt"), now.UTC()
	ev.Count, ev.First, ev.Last = g.count, g.first, g.last.Time
	return append(evs, ev)
}

// takeLocked removes the aggregates whose window has closed (all of them with all) and appends
// their events to due.
func (a *Aggregator) takeLocked(due []Event, now time.Time, all bool) []Event {
	for k, g := range a.pending {
		if all || !now.Before(g.end) {
			delete(a.pending, k)
			due = g.appendEvent(due, now)
		}
	}
	return due
}

// write appends aggregated events; a failure is logged (the requests they count were refused
// and answered long ago).
func (a *Aggregator) write(ctx context.Context, evs []Event) {
	for _, ev := range evs {
		if err := a.cfg.Store.AppendEvent(context.WithoutCancel(ctx), ev); err != nil {
			a.cfg.Log.ErrorContext(ctx, "record aggregated denials", slog.String("action", ev.Action),
				slog.String("reason", ev.Reason), slog.String("source", ev.Source), slog.Int64("count", ev.Count),
				slog.String("error", err.Error()))
		}
	}
}

// Flush writes the aggregated events of the windows that have closed, or of every window with
// all (at shutdown, so no count is lost), and returns how many it wrote.
func (a *Aggregator) Flush(ctx context.Context, all bool) int {
	a.mu.Lock()
	due := a.takeLocked(nil, a.cfg.Now(), all)
	a.mu.Unlock()
	a.write(ctx, due)
	return len(due)
}

// Pending is how many (source, action, reason) keys are being counted now.
func (a *Aggregator) Pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// Run flushes closed windows until ctx ends; it does not flush the rest (call Flush with all
// once the server has stopped taking requests).
func (a *Aggregator) Run(ctx context.Context) {
	t := time.NewTicker(max(a.cfg.Window/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Flush(ctx, false)
		}
	}
}
