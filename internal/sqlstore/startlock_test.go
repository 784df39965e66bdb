package sqlstore

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestExclusive: several stores on one database (replicas; processes on one SQLite file) run
// Exclusive's functions one at a time, each to its end.
func TestExclusive(t *testing.T) {
	for _, d := range dialects(t) {
		t.Run(d.name, func(t *testing.T) {
			dsn := d.dsn(t)
			const n = 5
			stores := make([]*Store, n)
			for i := range stores {
				stores[i] = mustOpen(t, dsn)
			}
			var inside, most, ran atomic.Int32
			var wg sync.WaitGroup
			for _, s := range stores {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := s.Exclusive(t.Context(), func(context.Context) error {
						now := inside.Add(1)
						for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
						}
						time.Sleep(20 * time.Millisecond) // a window for another to come in
						ran.Add(1)
						inside.Add(-1)
						return nil
					})
					if err != nil {
						t.Errorf("Exclusive: %v", err)
					}
				}()
			}
			wg.Wait()
			if most.Load() != 1 || ran.Load() != n {
				t.Errorf("%d ran, at most %d at once; want %d, one at a time", ran.Load(), most.Load(), n)
			}
		})
	}
}
