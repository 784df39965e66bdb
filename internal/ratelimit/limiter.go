// Package ratelimit limits what one client address may do: a token bucket per address
// (golang.org/x/time/rate), with a bounded number of tracked addresses so that the limiter
// itself cannot be grown without bound, and the one rule for what a request's client address is.
package ratelimit

import (
	"container/list"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxTracked is how many addresses a Limiter remembers unless told otherwise: about a
// megabyte of buckets.
const DefaultMaxTracked = 10000

// Limiter is a token bucket per key (a client address). Its zero value and a nil *Limiter
// allow everything. It is safe for concurrent use.
type Limiter struct {
	perMinute  float64
	burst      int
	maxTracked int
	now        func() time.Time

	mu    sync.Mutex
	byKey map[string]*list.Element // of *bucket
	lru   list.List                // most recently used at the front
}

type bucket struct {
	key string
	lim *rate.Limiter
}

// New returns a limiter that lets each key make burst requests at once and perMinute a minute
// after that. perMinute <= 0 or burst <= 0 disables it (New returns nil, which allows
// everything). At most maxTracked keys are remembered (0 = DefaultMaxTracked): past that the
// least recently seen key is forgotten, which only ever gives that key a full bucket again.
// now may be nil (time.Now).
func New(perMinute float64, burst, maxTracked int, now func() time.Time) *Limiter {
	if perMinute <= 0 || burst <= 0 {
		return nil
	}
	if maxTracked <= 0 {
		maxTracked = DefaultMaxTracked
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{perMinute: perMinute, burst: burst, maxTracked: maxTracked, now: now, byKey: map[string]*list.Element{}}
}

// Allow takes one token from key's bucket. When the bucket is empty it takes nothing and says
// how long until a token is there, rounded up to whole seconds (at least one), as Retry-After
// wants it.
func (l *Limiter) Allow(key string) (ok bool, retryAfter time.Duration) {
	if l == nil {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key)
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Minute // cannot happen with burst >= 1
	}
	wait := r.DelayFrom(now)
	if wait == 0 {
		return true, 0
	}
	r.CancelAt(now)
	secs := math.Ceil(wait.Seconds())
	return false, time.Duration(max(secs, 1)) * time.Second
}

// bucketLocked finds or makes key's bucket and marks it most recently used, forgetting the least
// recently used key when the limiter is full.
func (l *Limiter) bucketLocked(key string) *bucket {
	if e, ok := l.byKey[key]; ok {
		l.lru.MoveToFront(e)
		return e.Value.(*bucket)
	}
	for l.lru.Len() >= l.maxTracked {
		old := l.lru.Back()
		l.lru.Remove(old)
		delete(l.byKey, old.Value.(*bucket).key)
	}
	b := &bucket{key: key, lim: rate.NewLimiter(rate.Limit(l.perMinute/60), l.burst)}
	l.byKey[key] = l.lru.PushFront(b)
	return b
}

// Tracked is how many keys the limiter remembers now.
func (l *Limiter) Tracked() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
