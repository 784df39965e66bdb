package federation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Key lifetimes: an issuer's Cache-Control max-age, clamped so a missing or silly value neither
// hammers the issuer nor keeps a removed key for days.
const (
	minKeyTTL     = 5 * time.Minute
	maxKeyTTL     = 24 * time.Hour
	defaultKeyTTL = time.Hour
	// staleGrace is how long past expiry the last keys stay in use while refetches fail: an
	// issuer's outage should not stop every workload at once.
	staleGrace = 24 * time.Hour
)

// keyCache holds the keys of each issuer. Discovery issuers' keys are fetched and cached; a
// fetch caused by an unknown kid happens at most once per interval per issuer, and concurrent
// callers share it, so assertions with made-up kids cannot make us hammer an issuer.
type keyCache struct {
	client   *http.Client
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	sources map[string]*keySource // by issuer URL
}

// keySource is where one issuer's keys come from, and the keys last fetched.
type keySource struct {
	url string
	// fingerprint tells the cached source of an issuer from one added again differently.
	fingerprint string
	pinned      bool // keys are the issuer's pinned JWKS and never fetched

	mu        sync.Mutex
	jwksURI   string // "" until discovered, and again after a failed fetch
	keys      []key
	expires   time.Time
	lastFetch time.Time     // start of the last fetch, successful or not
	fetching  chan struct{} // non-nil while a fetch runs; closed when it ends
}

func newKeyCache(client *http.Client, interval time.Duration, log *slog.Logger) *keyCache {
	return &keyCache{client: client, interval: interval, log: log, sources: map[string]*keySource{}}
}

func fingerprint(is Issuer) string {
	if is.JWKS != nil {
		sum := sha256.Sum256(is.JWKS)
		return "pinned:" + hex.EncodeToString(sum[:])
	}
	return "discovery:" + strconv.FormatInt(is.CreatedAt.UnixNano(), 10)
}

// source returns the key source of is, making a new one when none is cached or the issuer was
// removed and added again with other keys.
func (c *keyCache) source(is Issuer) *keySource {
	fp := fingerprint(is)
	c.mu.Lock()
	defer c.mu.Unlock()
	if src, ok := c.sources[is.URL]; ok && src.fingerprint == fp {
		return src
	}
	src := &keySource{url: is.URL, fingerprint: fp}
	if is.JWKS != nil {
		src.pinned = true
		src.keys, _ = parseJWKS(is.JWKS) // checked when the issuer was added
	}
	c.sources[is.URL] = src
	return src
}

// install caches the keys fetched while adding a discovery issuer, so its first assertion needs
// no second fetch.
func (c *keyCache) install(is Issuer, jwksURI string, keys []key, ttl time.Duration, now time.Time) {
	src := c.source(is)
	src.mu.Lock()
	defer src.mu.Unlock()
	src.jwksURI, src.keys, src.expires, src.lastFetch = jwksURI, keys, now.Add(ttl), now
}

func (c *keyCache) drop(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.sources, url)
}

// current returns the keys to verify with at now, fetching them first when there are none yet
// or they expired. Expired keys stay in use for staleGrace while fetches fail.
func (c *keyCache) current(ctx context.Context, src *keySource, now time.Time) ([]key, *Refusal) {
	if src.pinned {
		if len(src.keys) == 0 {
			return nil, refuse(ReasonKeysUnavailable, "the pinned JWKS of issuer %s holds no usable key", src.url)
		}
		return src.keys, nil
	}
	src.mu.Lock()
	stale := src.keys == nil || !now.Before(src.expires)
	src.mu.Unlock()
	if stale {
		c.refresh(ctx, src, now)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	switch {
	case src.keys == nil:
		return nil, refuse(ReasonKeysUnavailable, "the keys of issuer %s could not be fetched", src.url)
	case now.After(src.expires.Add(staleGrace)):
		return nil, refuse(ReasonKeysUnavailable, "the keys of issuer %s expired at %s and could not be fetched again",
			src.url, src.expires.UTC().Format(time.RFC3339))
	}
	return src.keys, nil
}

// refresh fetches the issuer's keys again, unless a fetch is running (then it waits for that
// one) or the last one started less than the interval ago. It reports whether a fetch ended
// while it waited, i.e. whether looking again may find a new key.
func (c *keyCache) refresh(ctx context.Context, src *keySource, now time.Time) bool {
	if src.pinned {
		return false
	}
	src.mu.Lock()
	if ch := src.fetching; ch != nil {
		src.mu.Unlock()
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !src.lastFetch.IsZero() && now.Sub(src.lastFetch) < c.interval {
		src.mu.Unlock()
		return false
	}
	ch := make(chan struct{})
	src.fetching, src.lastFetch = ch, now
	jwksURI := src.jwksURI
	src.mu.Unlock()

	// Others wait for this fetch, so it must not end when the caller that started it goes away;
	// the HTTP client's timeout bounds it.
	fetched, err := fetchKeys(context.WithoutCancel(ctx), c.client, src.url, jwksURI)

	src.mu.Lock()
	defer src.mu.Unlock()
	if err != nil {
		src.jwksURI = "" // discover again next time: the issuer may have moved its keys
		if src.keys != nil {
			c.log.Warn("refetching an issuer's keys failed; keeping the last ones", slog.String("issuer", src.url),
				slog.Time("expires", src.expires), slog.String("error", err.Error()))
		} else {
			c.log.Warn("fetching an issuer's keys failed", slog.String("issuer", src.url), slog.String("error", err.Error()))
		}
	} else {
		src.jwksURI, src.keys, src.expires = fetched.jwksURI, fetched.keys, now.Add(fetched.ttl)
	}
	src.fetching = nil
	close(ch)
	return true
}

// keyTTL reads max-age from a Cache-Control header and clamps it.
func keyTTL(h http.Header) time.Duration {
	ttl := defaultKeyTTL
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "no-cache", "no-store":
			ttl = 0
		case "max-age":
			if n, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64); err == nil && n >= 0 {
				ttl = time.Duration(min(n, int64(maxKeyTTL/time.Second))) * time.Second
			}
		}
	}
	return min(max(ttl, minKeyTTL), maxKeyTTL)
}
