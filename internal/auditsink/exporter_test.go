package auditsink_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/auditsink"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

// openStore is the real SQLite store in a temporary directory, with n events appended.
func openStore(t testing.TB, n int) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "mandate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	appendEvents(t, s, n)
	return s
}

func appendEvents(t testing.TB, s *sqlstore.Store, n int) {
	t.Helper()
	for i := range n {
		ev := audit.New(time.Date(2031, 1, 2, 3, 4, 5, 6000, time.UTC), ids.New("req"), audit.ActionTokenIssue)
		ev.ActorType, ev.Detail = audit.ActorSystem, fmt.Sprintf("event %d", i)
		if i%3 == 0 {
			ev.Outcome = audit.OutcomeSuccess
		}
		if err := s.AppendEvent(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeCheckpoints serves a fixed list of checkpoints, each from the late[seq]-th read on, so
// some are made after the events they cover were delivered.
type fakeCheckpoints struct {
	mu    sync.Mutex
	all   []auditsink.Checkpoint
	late  map[int64]int
	reads int
}

func (f *fakeCheckpoints) CheckpointsAfter(_ context.Context, seq int64) ([]auditsink.Checkpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	var out []auditsink.Checkpoint
	for _, cp := range f.all {
		if cp.Seq > seq && f.reads > f.late[cp.Seq] {
			out = append(out, cp)
		}
	}
	return out, nil
}

// recorder is a sink that keeps what it receives; on each call, fail may make it take only a
// prefix of the batch and fail, and crash may stop the exporter after the call.
type recorder struct {
	name string
	mu   sync.Mutex
	got  []auditsink.Record
	// fail returns how many records of a batch of n to take before failing; n = succeed.
	fail  func(n int) int
	after func() // after each call, with mu not held
}

func (r *recorder) Name() string { return r.name }
func (r *recorder) Close() error { return nil }

func (r *recorder) Deliver(ctx context.Context, batch []auditsink.Record) error {
	defer func() {
		if r.after != nil {
			r.after()
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	take := len(batch)
	if r.fail != nil {
		take = r.fail(len(batch))
	}
	r.got = append(r.got, batch[:take]...)
	if take < len(batch) {
		return errors.New("receiver down")
	}
	return nil
}

func (r *recorder) records() []auditsink.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// dedup is what a receiver keeps after dropping what it has seen (by type and seq): the first
// time of each record.
func dedup(rs []auditsink.Record) []auditsink.Record {
	seen := map[string]bool{}
	var out []auditsink.Record
	for _, r := range rs {
		k := fmt.Sprint(r.Type(), r.Seq())
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// checkStream checks that, de-duplicated, rs is events 1..n in order, each checkpoint of cps
// after the event it covers and before the next checkpoint.
func checkStream(t *testing.T, rs []auditsink.Record, n int64, cps []auditsink.Checkpoint) {
	t.Helper()
	var seqs []int64
	var cpSeqs []int64
	var lastEvent int64
	for _, r := range dedup(rs) {
		switch r.Type() {
		case auditsink.TypeEvent:
			seqs = append(seqs, r.Seq())
			lastEvent = r.Seq()
		case auditsink.TypeCheckpoint:
			if r.Seq() > lastEvent {
				t.Errorf("checkpoint of seq %d before its event (last event %d)", r.Seq(), lastEvent)
			}
			cpSeqs = append(cpSeqs, r.Seq())
		}
	}
	want := make([]int64, n)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !slices.Equal(seqs, want) {
		t.Errorf("events delivered (de-duplicated) %v, want 1..%d in order", seqs, n)
	}
	var wantCps []int64
	for _, cp := range cps {
		wantCps = append(wantCps, cp.Seq)
	}
	if !slices.Equal(cpSeqs, wantCps) {
		t.Errorf("checkpoints delivered (de-duplicated) %v, want %v", cpSeqs, wantCps)
	}
}

// caughtUp reports whether the sink's saved cursor has reached event n and checkpoint cp: the
// exporter believes it has delivered everything.
func caughtUp(t testing.TB, s *sqlstore.Store, sink string, n int64, cps []auditsink.Checkpoint) func() bool {
	want := auditsink.Cursor{Seq: n}
	if len(cps) > 0 {
		want.CheckpointSeq = cps[len(cps)-1].Seq
	}
	return func() bool {
		c, err := s.SinkCursor(context.Background(), sink)
		if err != nil {
			t.Error(err)
			return true
		}
		return c == want
	}
}

// done reports whether rs holds event n and every checkpoint.
func done(rs []auditsink.Record, n int64, cps int) bool {
	var ev bool
	seen := map[int64]bool{}
	for _, r := range rs {
		if r.Type() == auditsink.TypeEvent && r.Seq() == n {
			ev = true
		}
		if r.Type() == auditsink.TypeCheckpoint {
			seen[r.Seq()] = true
		}
	}
	return ev && len(seen) == cps
}

// For random failure schedules (partial batches, failures in a row, crashes of the exporter
// with and without the cursor saved, checkpoints made late), what a receiver keeps after
// de-duplication by seq is exactly events 1..N in order, with every checkpoint after its event.
func TestDeliveryProperty(t *testing.T) {
	const n = 120
	store := openStore(t, n)
	for seed := range uint64(30) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			var mu sync.Mutex // guards rng
			var cps []auditsink.Checkpoint
			for seq := int64(1 + rng.IntN(10)); seq <= n; seq += int64(1 + rng.IntN(30)) {
				cps = append(cps, auditsink.Checkpoint{Seq: seq, Hash: fmt.Sprint("h", seq), JWS: "jws", Time: time.Unix(seq, 0)})
			}
			// A checkpoint turns up some reads after the one before it, as a real one is made
			// after its event, and in order.
			src := &fakeCheckpoints{all: cps, late: map[int64]int{}}
			reads := 0
			for _, cp := range cps {
				reads += rng.IntN(4)
				src.late[cp.Seq] = reads
			}
			failRate := rng.Float64() * 0.7
			crashRate := rng.Float64() * 0.2
			rec := &recorder{name: fmt.Sprint("prop-", seed)}
			var cancel context.CancelFunc // of the exporter running now; guarded by mu
			rec.fail = func(k int) int {
				mu.Lock()
				defer mu.Unlock()
				if rng.Float64() < failRate {
					return rng.IntN(k)
				}
				return k
			}
			rec.after = func() {
				mu.Lock()
				defer mu.Unlock()
				if rng.Float64() < crashRate {
					cancel() // the exporter stops mid-way: a crash, or a restart
				}
			}
			batch := 1 + rng.IntN(25)
			finished := caughtUp(t, store, rec.name, n, cps)
			for restarts := 0; !finished(); restarts++ {
				if restarts > 10000 {
					t.Fatal("no progress")
				}
				ctx, stop := context.WithCancel(t.Context())
				mu.Lock()
				cancel = stop
				mu.Unlock()
				e, err := auditsink.New(auditsink.Config{Store: store, Checkpoints: src, Sinks: []auditsink.Sink{rec},
					Batch: batch, Poll: time.Millisecond, MinBackoff: time.Microsecond, MaxBackoff: 10 * time.Microsecond})
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				wg.Go(func() {
					for !finished() && ctx.Err() == nil {
						e.Notify()
						time.Sleep(time.Millisecond) // polls only: no assertion depends on it
					}
					stop()
				})
				e.Run(ctx)
				wg.Wait()
			}
			checkStream(t, rec.records(), n, cps)
		})
	}
}

// A sink that is down loses nothing: events appended while it is down arrive when it is back,
// with the failures, deliveries and lag counted; Drain delivers the tail at shutdown.
func TestDownSinkCatchesUp(t *testing.T) {
	store := openStore(t, 10)
	var mu sync.Mutex
	down := true
	failed := make(chan struct{}, 1)
	rec := &recorder{name: "file:/x", fail: func(k int) int {
		mu.Lock()
		defer mu.Unlock()
		if down {
			select {
			case failed <- struct{}{}:
			default:
			}
			return 0
		}
		return k
	}}
	reg := prometheus.NewRegistry()
	e, err := auditsink.New(auditsink.Config{Store: store, Sinks: []auditsink.Sink{rec}, Batch: 4, Poll: time.Hour,
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	store.OnAppend(e.Notify)
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan struct{})
	go func() { e.Run(ctx); close(stopped) }()
	<-failed
	if got := value(e.MetricLag("file:/x")); got != 10 {
		t.Errorf("lag while down = %v, want 10", got)
	}
	appendEvents(t, store, 5)
	mu.Lock()
	down = false
	mu.Unlock()
	for !caughtUp(t, store, "file:/x", 15, nil)() {
		time.Sleep(time.Millisecond) // polls only
	}
	cancel()
	<-stopped
	appendEvents(t, store, 3) // after Run: Drain delivers them
	if err := e.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkStream(t, rec.records(), 18, nil)
	c, err := store.SinkCursor(t.Context(), "file:/x")
	if err != nil || c.Seq != 18 {
		t.Errorf("saved cursor %+v, %v; want seq 18", c, err)
	}
	if got := value(e.MetricFailures("file:/x")); got < 1 {
		t.Errorf("failures = %v, want at least 1", got)
	}
	if got := value(e.MetricDelivered("file:/x")); got != 18 {
		t.Errorf("delivered = %v, want 18 (once each)", got)
	}
	// A new exporter on the same store (a restart) has nothing to send.
	rec2 := &recorder{name: "file:/x"}
	e2, err := auditsink.New(auditsink.Config{Store: store, Sinks: []auditsink.Sink{rec2}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := rec2.records(); len(got) != 0 {
		t.Errorf("after a restart the sink got %d records again, want none", len(got))
	}
}

func TestMerge(t *testing.T) {
	ev := func(seq int64) audit.Event { return audit.Event{Seq: seq} }
	cp := func(seq int64) auditsink.Checkpoint { return auditsink.Checkpoint{Seq: seq} }
	for _, tc := range []struct {
		name string
		evs  []audit.Event
		cps  []auditsink.Checkpoint
		want string
	}{
		{"none", nil, nil, ""},
		{"events only", []audit.Event{ev(1), ev(2)}, nil, "e1 e2 "},
		{"after its event", []audit.Event{ev(3), ev(4), ev(5)}, []auditsink.Checkpoint{cp(3), cp(5)}, "e3 c3 e4 e5 c5 "},
		{"late ones first", []audit.Event{ev(7), ev(8)}, []auditsink.Checkpoint{cp(2), cp(6), cp(8)}, "c2 c6 e7 e8 c8 "},
		{"only late ones", nil, []auditsink.Checkpoint{cp(2)}, "c2 "},
		{"two on one seq", []audit.Event{ev(1)}, []auditsink.Checkpoint{cp(1), cp(1)}, "e1 c1 c1 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			for _, r := range auditsink.Merge(tc.evs, tc.cps) {
				got += fmt.Sprintf("%c%d ", r.Type()[0], r.Seq())
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// value is the value of a gauge or counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}
