package registry

import (
	"context"
	"crypto"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/internal/audit"
)

// The cache of agents in front of the store. Every token request authenticates an agent by one
// of its keys, and reading the agent and parsing its did:key on each was a fifth of an
// issuance's CPU. Entries are dropped by Invalidate — called for every change of an agent or
// its keys, on every replica, by the composition root's change feed — and live at most
// Config.CacheTTL, which bounds how stale an entry can be if a change notice is ever lost.

// cacheMax bounds the number of agents held; past it, arbitrary entries make room.
const cacheMax = 10_000

// cachedKey is a key of a cached agent with its parsed public key.
type cachedKey struct {
	pub       crypto.PublicKey
	expiresAt time.Time
}

type cacheEntry struct {
	agent  Agent
	keys   map[string]cachedKey // by DID
	loaded time.Time            // monotonic
}

type agentCache struct {
	ttl     time.Duration
	mu      sync.Mutex
	gen     uint64 // moves on every invalidation: a load begun before one is not kept
	entries map[string]*cacheEntry
}

func newAgentCache(ttl time.Duration) *agentCache {
	return &agentCache{ttl: ttl, entries: make(map[string]*cacheEntry)}
}

// get returns id's entry if it is fresh, and the generation a load of id must carry to put.
func (c *agentCache) get(id string) (*cacheEntry, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if ok && time.Since(e.loaded) < c.ttl {
		return e, c.gen
	}
	return nil, c.gen
}

// put keeps e for id unless something was invalidated since the load began (gen).
func (c *agentCache) put(id string, e *cacheEntry, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.ttl <= 0 {
		return
	}
	if len(c.entries) >= cacheMax {
		for k := range c.entries {
			delete(c.entries, k)
			if len(c.entries) < cacheMax*9/10 {
				break
			}
		}
	}
	c.entries[id] = e
}

func (c *agentCache) invalidate(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if id == "" {
		clear(c.entries)
		return
	}
	delete(c.entries, id)
}

// entryOf parses a's keys into a cache entry.
func entryOf(a Agent) (*cacheEntry, error) {
	e := &cacheEntry{agent: a, keys: make(map[string]cachedKey, len(a.Keys)), loaded: time.Now()}
	for _, k := range a.Keys {
		pub, err := didkey.Parse(k.DID)
		if err != nil {
			return nil, err
		}
		e.keys[k.DID] = cachedKey{pub: pub, expiresAt: k.ExpiresAt}
	}
	return e, nil
}

// Invalidate drops the cached agent id (every agent when id is ""), so its next use reads the
// store. Call it for every change of an agent or its keys, on every replica.
func (s *Service) Invalidate(id string) { s.cache.invalidate(id) }

// invalidating drops an agent from the cache as the registry writes it, so this replica never
// serves an agent older than its own last write (other replicas learn it from the change feed).
type invalidating struct {
	Store
	cache *agentCache
}

func (s invalidating) ClaimAgent(ctx context.Context, codeHash, ownerID string, now time.Time, ev audit.Event) (Agent, error) {
	a, err := s.Store.ClaimAgent(ctx, codeHash, ownerID, now, ev)
	s.cache.invalidate(a.ID) // "" (all) when the agent is unknown to us
	return a, err
}

func (s invalidating) UpdateAgent(ctx context.Context, id string, fn func(*Agent) error, ev audit.Event) (Agent, error) {
	defer s.cache.invalidate(id)
	return s.Store.UpdateAgent(ctx, id, fn, ev)
}

func (s invalidating) RotateKey(ctx context.Context, agentID string, newKey Key, oldExpires time.Time, ev audit.Event) (Agent, error) {
	defer s.cache.invalidate(agentID)
	return s.Store.RotateKey(ctx, agentID, newKey, oldExpires, ev)
}

func (s invalidating) RevokeKey(ctx context.Context, agentID, did string, at time.Time, ev audit.Event) (Agent, error) {
	defer s.cache.invalidate(agentID)
	return s.Store.RevokeKey(ctx, agentID, did, at, ev)
}

func (s invalidating) RenewClaimCode(ctx context.Context, agentID string, code ClaimCode, ev audit.Event) error {
	defer s.cache.invalidate(agentID)
	return s.Store.RenewClaimCode(ctx, agentID, code, ev)
}

func (s invalidating) PurgeUnclaimed(ctx context.Context, lapsedBefore time.Time, limit int, ev func(Agent) audit.Event) ([]Agent, error) {
	gone, err := s.Store.PurgeUnclaimed(ctx, lapsedBefore, limit, ev)
	for _, a := range gone {
		s.cache.invalidate(a.ID)
	}
	return gone, err
}
