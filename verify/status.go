package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrRevoked is wrapped by StatusSource errors for a revoked agent or token.
var ErrRevoked = errors.New("revoked")

// StatusSource tells whether a verified caller is still allowed. Check returns nil, an error
// wrapping ErrRevoked (Verify answers 401 invalid_token "revoked"), or another error when the
// status cannot be known (Verify answers 503: it fails closed).
type StatusSource interface {
	Check(ctx context.Context, c *Caller) error
}

// RevocationFeed is a StatusSource over the issuer's revocation feed
// (GET {issuer}/v1/revocations). The feed is cached and refetched synchronously, one request for
// all concurrent callers, once it is older than maxAge (0 means 1s). If a refetch fails the last
// feed stays in use for at most MaxStale (default 1m) after it was fetched; then Check fails
// closed until the feed can be read again. hc nil means http.DefaultClient.
func RevocationFeed(feedURL string, hc *http.Client, maxAge time.Duration, opts ...Option) StatusSource {
	if hc == nil {
		hc = http.DefaultClient
	}
	if maxAge <= 0 {
		maxAge = time.Second
	}
	return &feed{url: feedURL, hc: hc, maxAge: maxAge, o: buildOptions(opts)}
}

type feed struct {
	url    string
	hc     *http.Client
	maxAge time.Duration
	o      options

	snap atomic.Pointer[feedSnapshot]
	sf   singleflight.Group

	mu         sync.Mutex
	failedAt   time.Time // of the last failed fetch; no new attempt for maxAge after it
	lastFailed error
}

type feedSnapshot struct {
	agents  map[string]struct{}
	tokens  map[string]struct{}
	fetched time.Time
}

type feedDocument struct {
	Agents []string `json:"agents"`
	Tokens []struct {
		JTI string `json:"jti"`
		Exp int64  `json:"exp"`
	} `json:"tokens"`
	GeneratedAt int64 `json:"generated_at"`
}

func (f *feed) Check(ctx context.Context, c *Caller) error {
	now := f.o.now()
	s := f.snap.Load()
	if s == nil || now.Sub(s.fetched) >= f.maxAge {
		fresh, err := f.refresh(ctx, now)
		switch {
		case err == nil:
			s = fresh
		case s != nil && now.Sub(s.fetched) < f.o.maxStale:
			// keep using the last feed for a little while
		default:
			return fmt.Errorf("verify: revocation status unknown: %w", err)
		}
	}
	return s.check(c)
}

func (s *feedSnapshot) check(c *Caller) error {
	if len(s.agents) > 0 {
		for _, id := range [...]string{c.AgentID, c.ClientID, c.Subject} {
			if _, revoked := s.agents[id]; revoked && id != "" {
				return fmt.Errorf("%w: the agent %s has been revoked", ErrRevoked, id)
			}
		}
		// Every agent in the delegation chain: revoking one stops all tokens derived from it.
		act, _ := c.Claims["act"].(map[string]any)
		for depth := 0; act != nil && depth < 64; depth++ {
			if id, _ := act["sub"].(string); id != "" {
				if _, revoked := s.agents[id]; revoked {
					return fmt.Errorf("%w: the agent %s in this token's delegation chain has been revoked", ErrRevoked, id)
				}
			}
			act, _ = act["act"].(map[string]any)
		}
	}
	if _, revoked := s.tokens[c.JTI]; revoked && c.JTI != "" {
		return fmt.Errorf("%w: this token has been revoked", ErrRevoked)
	}
	return nil
}

func (f *feed) refresh(ctx context.Context, now time.Time) (*feedSnapshot, error) {
	f.mu.Lock()
	if !f.failedAt.IsZero() && now.Sub(f.failedAt) < f.maxAge {
		err := f.lastFailed
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	ch := f.sf.DoChan("feed", func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.o.timeout)
		defer cancel()
		s, err := f.fetch(fctx)
		f.mu.Lock()
		if err != nil {
			f.failedAt, f.lastFailed = f.o.now(), err
		} else {
			f.failedAt, f.lastFailed = time.Time{}, nil
		}
		f.mu.Unlock()
		if err != nil {
			return nil, err
		}
		f.snap.Store(s)
		return s, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*feedSnapshot), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *feed) fetch(ctx context.Context) (*feedSnapshot, error) {
	// Stamp the snapshot with the time the request started: a revocation published while the
	// request was in flight must not be considered covered.
	started := f.o.now()
	var doc feedDocument
	if err := getJSON(ctx, f.hc, f.url, "application/json", &doc); err != nil {
		return nil, fmt.Errorf("verify: fetching the revocation feed: %w", err)
	}
	s := &feedSnapshot{
		agents:  make(map[string]struct{}, len(doc.Agents)),
		tokens:  make(map[string]struct{}, len(doc.Tokens)),
		fetched: started,
	}
	for _, a := range doc.Agents {
		s.agents[a] = struct{}{}
	}
	for _, t := range doc.Tokens {
		s.tokens[t.JTI] = struct{}{}
	}
	return s, nil
}
