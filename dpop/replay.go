package dpop

import (
	"container/heap"
	"context"
	"errors"
	"sync"
	"time"
)

// ReplayStore remembers proof identifiers until they expire, so each proof is
// accepted once (RFC 9449 §11.1). Use records id until exp and returns
// ErrReplay if id was already recorded and has not expired. Implementations
// must be safe for concurrent use; with several replicas they must be shared,
// or a proof could be replayed once per replica.
type ReplayStore interface {
	Use(ctx context.Context, id string, exp time.Time) error
}

// ErrReplay is returned by a ReplayStore for an identifier it has already
// recorded; Check turns it into an Error with Reason "replay".
var ErrReplay = errors.New("dpop: proof already used")

// MemoryReplayStore is a ReplayStore for one process: a map guarded by a
// mutex. Expired entries are purged a few at a time on each Use, so memory
// stays proportional to the proofs seen within one live window and no
// background goroutine has to be started or stopped.
//
// Its clock must agree with the Checker's: entries are kept until exp by
// the store's clock, so a store on real time behind a checker on a fake
// clock in the past forgets every proof at once. NewChecker sets Now from
// its Config when it is unset; set it yourself when sharing one store
// between checkers with different clocks.
type MemoryReplayStore struct {
	// Now is the store's clock; nil means time.Now. Set it before first use.
	Now func() time.Time

	mu    sync.Mutex
	seen  map[string]time.Time
	byExp expiryHeap
}

// purgePerUse bounds the work one Use does; since each Use adds at most one
// entry and removes up to this many, a backlog of expired entries shrinks.
const purgePerUse = 16

// NewMemoryReplayStore returns an empty in-memory store.
func NewMemoryReplayStore() *MemoryReplayStore {
	return &MemoryReplayStore{seen: make(map[string]time.Time)}
}

// Use implements ReplayStore.
func (s *MemoryReplayStore) Use(_ context.Context, id string, exp time.Time) error {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.purge(now, purgePerUse)
	if old, ok := s.seen[id]; ok && old.After(now) {
		return ErrReplay
	}
	if !exp.After(now) {
		// Already expired: a checker would refuse the proof on its iat
		// anyway, so there is nothing worth remembering.
		delete(s.seen, id)
		return nil
	}
	s.seen[id] = exp
	heap.Push(&s.byExp, expiry{id: id, exp: exp})
	return nil
}

// Forget removes id, so that its next Use is judged afresh. It is for a store in front of a
// shared one: a proof recorded here whose use in the shared store then failed (the store did
// not answer, so the request was refused as unavailable) must not be refused as a replay when
// the client retries it.
func (s *MemoryReplayStore) Forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.seen, id) // its heap entry goes when it expires (purge checks it still matches)
}

func (s *MemoryReplayStore) purge(now time.Time, max int) {
	for i := 0; i < max && len(s.byExp) > 0 && !s.byExp[0].exp.After(now); i++ {
		e := heap.Pop(&s.byExp).(expiry)
		// The id may have been recorded again with a later expiry after this
		// entry was pushed; only the newest record counts.
		if cur, ok := s.seen[e.id]; ok && cur.Equal(e.exp) {
			delete(s.seen, e.id)
		}
	}
}

// len returns the number of live records; for tests.
func (s *MemoryReplayStore) len() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen), len(s.byExp)
}

type expiry struct {
	id  string
	exp time.Time
}

type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp.Before(h[j].exp) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = expiry{}
	*h = old[:len(old)-1]
	return e
}
