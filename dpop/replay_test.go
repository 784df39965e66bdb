package dpop

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestMemoryReplayStoreExpiry(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	s := NewMemoryReplayStore()
	s.Now = func() time.Time { return now }

	if err := s.Use(ctx, "a", now.Add(time.Minute)); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if err := s.Use(ctx, "a", now.Add(time.Minute)); !errors.Is(err, ErrReplay) {
		t.Fatalf("second use = %v, want ErrReplay", err)
	}
	if err := s.Use(ctx, "b", now.Add(time.Minute)); err != nil {
		t.Fatalf("other id: %v", err)
	}
	if err := s.Use(ctx, "old", now.Add(-time.Second)); err != nil {
		t.Fatalf("already expired id: %v", err)
	}
	now = now.Add(time.Minute)
	if err := s.Use(ctx, "a", now.Add(time.Minute)); err != nil {
		t.Fatalf("use after expiry = %v, want nil", err)
	}
	if err := s.Use(ctx, "a", now.Add(time.Minute)); !errors.Is(err, ErrReplay) {
		t.Fatalf("reuse after re-record = %v, want ErrReplay", err)
	}
}

func TestMemoryReplayStorePurges(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	s := NewMemoryReplayStore()
	s.Now = func() time.Time { return now }
	for i := range 1000 {
		if err := s.Use(ctx, fmt.Sprint("old-", i), now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(time.Hour)
	for i := range 200 {
		if err := s.Use(ctx, fmt.Sprint("new-", i), now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	// 200 uses purge up to 200*purgePerUse expired entries: all of them.
	if m, h := s.len(); m != 200 || h != 200 {
		t.Errorf("after purge: %d map entries, %d heap entries; want 200, 200", m, h)
	}
}

func TestMemoryReplayStoreConcurrent(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryReplayStore()
	exp := time.Now().Add(time.Hour)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				// Every goroutine races for the shared ids; each private id
				// must be accepted.
				if err := s.Use(ctx, fmt.Sprint("shared-", i), exp); err == nil {
					wins.Add(1)
				} else if !errors.Is(err, ErrReplay) {
					t.Errorf("shared: %v", err)
				}
				if err := s.Use(ctx, fmt.Sprint("own-", g, "-", i), exp); err != nil {
					t.Errorf("own id refused: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if got := wins.Load(); got != 200 {
		t.Errorf("%d shared ids accepted, want exactly 200 (one per id)", got)
	}
}

func TestCheckConcurrentReplay(t *testing.T) {
	c := newTestChecker(nil)
	p, err := NewProof(testEdKey, "POST", testURL, ProofOptions{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Check(context.Background(), p, Request{Method: "POST", URL: testURL}); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Errorf("proof accepted %d times, want once", ok.Load())
	}
}

// TestNewCheckerSharesClockWithMemoryStore guards the trap of a fake checker
// clock in the past and a store on real time: every proof would look expired
// to the store and be accepted again.
func TestNewCheckerSharesClockWithMemoryStore(t *testing.T) {
	store := NewMemoryReplayStore()
	c := NewChecker(Config{Replay: store, Now: func() time.Time { return testNow }})
	p, _ := NewProof(testEdKey, "POST", testURL, ProofOptions{Now: testNow})
	req := Request{Method: "POST", URL: testURL}
	if _, err := c.Check(context.Background(), p, req); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Check(context.Background(), p, req); err == nil {
		t.Fatal("replayed proof accepted")
	}
}
