package auditsink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Cursor is how far a sink has got: every event up to Seq and every checkpoint up to
// CheckpointSeq has been delivered. The zero Cursor is a new sink's: it starts at the beginning
// of the chain.
type Cursor struct {
	Seq           int64
	CheckpointSeq int64
}

// Store is what the exporter needs of the database: the chain, read by cursor, and each sink's
// saved cursor.
type Store interface {
	ListEvents(ctx context.Context, f audit.Filter) ([]audit.Event, error)
	// SinkCursor returns the saved cursor of the named sink, the zero Cursor for a sink never
	// saved.
	SinkCursor(ctx context.Context, sink string) (Cursor, error)
	// SaveSinkCursor saves the cursor of the named sink. A cursor never moves back: each of its
	// fields keeps the greater of the saved and the new value.
	SaveSinkCursor(ctx context.Context, sink string, c Cursor) error
}

// Config is what New needs. Store and Sinks are required.
type Config struct {
	Store       Store
	Checkpoints Checkpoints // nil: events only
	Sinks       []Sink
	Batch       int           // events read and delivered at once; 0 = 100
	Poll        time.Duration // how often the chain is read when nothing calls Notify; 0 = 1 s
	// Backoff after a failure starts at MinBackoff and doubles up to MaxBackoff, with jitter
	// (each wait is between half and all of the current step); 0 = 500 ms and 1 min.
	MinBackoff, MaxBackoff time.Duration
	Metrics                prometheus.Registerer // nil: no metrics
	Log                    *slog.Logger          // nil: no log
	Now                    func() time.Time      // nil: time.Now
}

// Exporter runs one delivery loop per sink.
type Exporter struct {
	cfg     Config
	workers []*worker
	metrics *metrics
}

type worker struct {
	e    *Exporter
	sink Sink
	wake chan struct{}
	// cursor is what has been delivered, whether saved yet or not; loaded marks it read from
	// the store. Only the worker's loop, and Drain after it, touch them.
	cursor Cursor
	loaded bool
	saved  Cursor
}

// New returns an exporter for cfg.Sinks; Run starts it.
func New(cfg Config) (*Exporter, error) {
	if cfg.Store == nil {
		return nil, errors.New("auditsink: no store")
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(cfg.MinBackoff, time.Minute)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Exporter{cfg: cfg}
	seen := map[string]bool{}
	for _, s := range cfg.Sinks {
		if seen[s.Name()] {
			return nil, fmt.Errorf("auditsink: two sinks are named %s", s.Name())
		}
		seen[s.Name()] = true
		e.workers = append(e.workers, &worker{e: e, sink: s, wake: make(chan struct{}, 1)})
	}
	var err error
	if e.metrics, err = newMetrics(cfg.Metrics); err != nil {
		return nil, fmt.Errorf("auditsink metrics: %w", err)
	}
	for _, w := range e.workers {
		e.metrics.start(w.sink.Name())
	}
	return e, nil
}

// Delivered is the highest seq every sink has delivered and saved: what retention may remove
// (audit.RetentionFloor). It reads the saved cursors, so a delivery not yet saved counts as not
// delivered.
func (e *Exporter) Delivered(ctx context.Context) (int64, error) {
	floor := int64(-1)
	for _, w := range e.workers {
		c, err := e.cfg.Store.SinkCursor(ctx, w.sink.Name())
		if err != nil {
			return 0, fmt.Errorf("read the cursor of audit sink %s: %w", w.sink.Name(), err)
		}
		if floor < 0 || c.Seq < floor {
			floor = c.Seq
		}
	}
	return max(floor, 0), nil
}

// Notify wakes every sink's loop to read the chain now: the store calls it after appending.
// It never blocks.
func (e *Exporter) Notify() {
	for _, w := range e.workers {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Run delivers to every sink until ctx ends, and returns when every loop has stopped. Call
// Drain after it to deliver what is left.
func (e *Exporter) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
}

// Drain delivers what each sink has not yet received, up to the end of the chain as it is now,
// until ctx ends; a sink that fails is left for the next start (it loses nothing). Run must
// have returned. It returns the sinks that could not be brought up to date.
func (e *Exporter) Drain(ctx context.Context) error {
	var errs []error
	for _, w := range e.workers {
		for ctx.Err() == nil {
			n, err := w.step(ctx)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", w.sink.Name(), err))
				break
			}
			if n == 0 {
				break
			}
		}
		if err := w.save(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", w.sink.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// Close closes every sink.
func (e *Exporter) Close() error {
	var errs []error
	for _, w := range e.workers {
		errs = append(errs, w.sink.Close())
	}
	return errors.Join(errs...)
}

func (w *worker) log() *slog.Logger { return w.e.cfg.Log.With(slog.String("sink", w.sink.Name())) }

// run delivers batch after batch, waiting for new events when there are none and backing off
// after a failure, until ctx ends.
func (w *worker) run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		n, err := w.step(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			failures++
			d := w.e.backoff(failures)
			w.log().WarnContext(ctx, "audit sink delivery failed; retrying from its cursor, nothing is lost",
				slog.Int64("cursor", w.cursor.Seq), slog.Int("failures", failures), slog.Duration("retry_in", d),
				slog.String("error", err.Error()))
			sleep(ctx, d, nil)
		case n == 0:
			if failures > 0 {
				w.log().InfoContext(ctx, "audit sink caught up", slog.Int64("cursor", w.cursor.Seq))
			}
			failures = 0
			if err := w.save(ctx); err != nil && ctx.Err() == nil {
				w.log().WarnContext(ctx, "save audit sink cursor", slog.String("error", err.Error()))
			}
			sleep(ctx, w.e.cfg.Poll, w.wake)
		default:
			if failures > 0 {
				w.log().InfoContext(ctx, "audit sink delivering again", slog.Int64("cursor", w.cursor.Seq))
			}
			failures = 0
		}
	}
}

// step delivers the next batch after the cursor, saves the cursor, and returns how many
// records it delivered (0 when the sink is up to date).
func (w *worker) step(ctx context.Context) (int, error) {
	e := w.e
	if !w.loaded {
		c, err := e.cfg.Store.SinkCursor(ctx, w.sink.Name())
		if err != nil {
			return 0, fmt.Errorf("read cursor: %w", err)
		}
		w.cursor, w.saved, w.loaded = c, c, true
	}
	batch, next, err := w.next(ctx)
	if err != nil {
		return 0, err
	}
	if len(batch) == 0 {
		return 0, nil
	}
	if err := w.sink.Deliver(ctx, batch); err != nil {
		e.metrics.failed(w.sink.Name())
		return 0, fmt.Errorf("deliver seq %d to %d: %w", batch[0].Seq(), batch[len(batch)-1].Seq(), err)
	}
	w.cursor = next
	e.metrics.delivered(w.sink.Name(), len(batch), e.cfg.Now())
	if err := w.save(ctx); err != nil {
		// Delivered, not saved: the batch is sent again after a restart. Go on.
		w.log().WarnContext(ctx, "save audit sink cursor; a restart would send the last batch again", slog.String("error", err.Error()))
	}
	return len(batch), nil
}

// next reads the records after the cursor: up to Batch events, each followed by the
// checkpoints that cover it, after any checkpoint made late for an event already delivered.
// It also sets the lag gauge.
func (w *worker) next(ctx context.Context) ([]Record, Cursor, error) {
	e := w.e
	evs, err := e.cfg.Store.ListEvents(ctx, audit.Filter{After: w.cursor.Seq, Ascending: true, Limit: e.cfg.Batch})
	if err != nil {
		return nil, w.cursor, fmt.Errorf("read events after seq %d: %w", w.cursor.Seq, err)
	}
	next := w.cursor
	if len(evs) > 0 {
		next.Seq = evs[len(evs)-1].Seq
	}
	var cps []Checkpoint
	if e.cfg.Checkpoints != nil {
		all, err := e.cfg.Checkpoints.CheckpointsAfter(ctx, w.cursor.CheckpointSeq)
		if err != nil {
			return nil, w.cursor, fmt.Errorf("read checkpoints after seq %d: %w", w.cursor.CheckpointSeq, err)
		}
		for _, cp := range all {
			if cp.Seq > w.cursor.CheckpointSeq && cp.Seq <= next.Seq {
				cps = append(cps, cp)
				next.CheckpointSeq = max(next.CheckpointSeq, cp.Seq)
			}
		}
	}
	head := next.Seq
	if len(evs) == e.cfg.Batch {
		if last, err := e.cfg.Store.ListEvents(ctx, audit.Filter{Limit: 1}); err == nil && len(last) == 1 {
			head = last[0].Seq
		}
	}
	e.metrics.lag(w.sink.Name(), head-w.cursor.Seq)
	return merge(evs, cps), next, nil
}

// merge interleaves events and checkpoints (both in Seq order): each checkpoint right after
// the event it covers, and those covering no event of evs (made after it was delivered) first.
func merge(evs []audit.Event, cps []Checkpoint) []Record {
	out := make([]Record, 0, len(evs)+len(cps))
	i := 0
	for i < len(cps) && (len(evs) == 0 || cps[i].Seq < evs[0].Seq) {
		out = append(out, Record{Checkpoint: &cps[i]})
		i++
	}
	for j := range evs {
		out = append(out, Record{Event: &evs[j]})
		for i < len(cps) && cps[i].Seq <= evs[j].Seq {
			out = append(out, Record{Checkpoint: &cps[i]})
			i++
		}
	}
	return out
}

// save writes the cursor to the store if it moved since the last save.
func (w *worker) save(ctx context.Context) error {
	if !w.loaded || w.cursor == w.saved {
		return nil
	}
	if err := w.e.cfg.Store.SaveSinkCursor(ctx, w.sink.Name(), w.cursor); err != nil {
		return fmt.Errorf("save cursor at seq %d: %w", w.cursor.Seq, err)
	}
	w.saved = w.cursor
	return nil
}

// backoff is the wait after the n-th failure in a row: MinBackoff doubled n-1 times, at most
// MaxBackoff, of which a random part, from half to all of it.
func (e *Exporter) backoff(n int) time.Duration {
	d := e.cfg.MinBackoff
	for i := 1; i < n && d < e.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, e.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d, or until ctx ends or wake fires.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}
