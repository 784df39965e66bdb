package verify

import (
	"sync"
	"time"
)

// tokenCache remembers the Callers of access tokens already verified (signature and claims),
// keyed by the token itself: the same bytes always verify the same way, so re-checking a token
// on every request only costs a signature check. Entries are used only until the token expires;
// the cache is bounded and sheds a quarter of its entries when full. A nil cache remembers
// nothing.
type tokenCache struct {
	mu  sync.RWMutex
	max int
	m   map[string]*Caller
}

func newTokenCache(size int) *tokenCache {
	switch {
	case size < 0:
		return nil
	case size == 0:
		size = 4096
	}
	return &tokenCache{max: size, m: make(map[string]*Caller, size)}
}

// get returns a copy of the Caller of tok while the token is unexpired at now (with leeway).
func (tc *tokenCache) get(tok string, now time.Time, leeway time.Duration) (*Caller, bool) {
	if tc == nil {
		return nil, false
	}
	tc.mu.RLock()
	c := tc.m[tok]
	tc.mu.RUnlock()
	if c == nil || !now.Before(c.ExpiresAt.Add(leeway)) {
		return nil, false
	}
	cp := *c // each request gets its own Caller; slices and Claims are shared and read-only
	return &cp, true
}

func (tc *tokenCache) put(tok string, c *Caller) {
	if tc == nil {
		return
	}
	cp := *c
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if len(tc.m) >= tc.max {
		n := 0
		for k := range tc.m { // map order is random: shed a quarter
			delete(tc.m, k)
			if n++; n >= tc.max/4 {
				break
			}
		}
	}
	tc.m[tok] = &cp
}
