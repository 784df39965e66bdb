package verify

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
)

// ErrUnknownKey is returned by a KeySource for a kid it does not know.
var ErrUnknownKey = errors.New("verify: unknown signing key")

// KeySource returns the issuer's public signing key for a kid: an ed25519.PublicKey or a P-256
// *ecdsa.PublicKey. It returns an error wrapping ErrUnknownKey when the kid is not published; any
// other error means the keys could not be read (Verify then answers 503, failing closed).
type KeySource interface {
	PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error)
}

// StaticKeys is a KeySource over a fixed set of keys by kid, for tests and air-gapped deployments.
type StaticKeys map[string]crypto.PublicKey

// PublicKey implements KeySource.
func (s StaticKeys) PublicKey(_ context.Context, kid string) (crypto.PublicKey, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// Option tunes RemoteKeys and RevocationFeed. Options that do not apply to a source are ignored.
type Option func(*options)

type options struct {
	minRefresh time.Duration
	maxAge     time.Duration
	maxStale   time.Duration
	timeout    time.Duration
	retain     time.Duration // how long RevocationFeed keeps an entry past its exp
	noStream   bool          // RevocationFeed only polls
	now        func() time.Time
}

// WithMinRefresh sets how often RemoteKeys may refetch the JWKS because of an unknown kid
// (default 10s). Failed fetches count too, so a flood of made-up kids costs one fetch per period.
func WithMinRefresh(d time.Duration) Option { return func(o *options) { o.minRefresh = d } }

// WithMaxAge sets how long RemoteKeys trusts a fetched JWKS before refetching it on the next
// lookup (default 10m), so a key the issuer withdraws stops verifying. If that refetch fails the
// old set stays in use.
func WithMaxAge(d time.Duration) Option { return func(o *options) { o.maxAge = d } }

// WithMaxStale bounds how long RevocationFeed keeps answering from its last copy of the feed
// while refetches fail (default 1m): it refuses on its own when it cannot reach the feed for
// longer than this, failing every Check closed until the feed can be read again.
func WithMaxStale(d time.Duration) Option { return func(o *options) { o.maxStale = d } }

// WithoutStream makes RevocationFeed only poll the feed, never follow its stream.
func WithoutStream() Option { return func(o *options) { o.noStream = true } }

// WithTimeout bounds one fetch (default 10s).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// withRetain makes RevocationFeed keep entries for at least d past their exp. New passes its
// Leeway: a token is accepted until its exp plus the leeway, and so must its revocation be kept.
func withRetain(d time.Duration) Option {
	return func(o *options) {
		if d > o.retain {
			o.retain = d
		}
	}
}

// defaultRetain is how long RevocationFeed keeps an entry past its exp by default.
const defaultRetain = 5 * time.Minute

// WithNow sets the clock (default time.Now).
func WithNow(now func() time.Time) Option { return func(o *options) { o.now = now } }

func buildOptions(opts []Option) options {
	o := options{
		minRefresh: 10 * time.Second,
		maxAge:     10 * time.Minute,
		maxStale:   time.Minute,
		timeout:    10 * time.Second,
		retain:     defaultRetain,
		now:        time.Now,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

// RemoteKeys is a KeySource over the JWKS at jwksURL. The set is fetched on first use and cached;
// an unknown kid triggers a refetch at most once per MinRefresh, and concurrent fetches are
// coalesced into one request. hc nil means http.DefaultClient.
func RemoteKeys(jwksURL string, hc *http.Client, opts ...Option) KeySource {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &remoteKeys{url: jwksURL, hc: hc, o: buildOptions(opts)}
}

type remoteKeys struct {
	url string
	hc  *http.Client
	o   options

	set atomic.Pointer[keySet]
	sf  singleflight.Group

	mu       sync.Mutex
	lastMiss time.Time // start of the last fetch caused by an unknown kid
	failedAt time.Time // of the last failed fetch; cleared by a success
	lastErr  error
}

type keySet struct {
	keys    map[string]crypto.PublicKey
	fetched time.Time
}

func (k *remoteKeys) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	set := k.set.Load()
	if set != nil {
		key, ok := set.keys[kid]
		if ok && k.o.now().Sub(set.fetched) < k.o.maxAge {
			return key, nil
		}
		if ok {
			// Too old: refetch, but a failed refetch keeps the old keys usable.
			if fresh, err := k.refresh(ctx, false, set); err == nil {
				key, ok = fresh.keys[kid]
				if !ok {
					return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
				}
			}
			return key, nil
		}
	}
	set, err := k.refresh(ctx, set != nil, set)
	if err != nil {
		if errors.Is(err, errTooSoon) {
			return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
		}
		return nil, err
	}
	if key, ok := set.keys[kid]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownKey, kid)
}

var errTooSoon = errors.New("verify: refetch rate limited")

// refresh fetches the JWKS; concurrent callers share one fetch, which is not cancelled when one
// caller gives up. seen is the set the caller looked at: when another fetch has stored a newer
// one since, that one is the answer (a caller that arrived just as a shared fetch ended would
// otherwise start a second). A fetch caused by an unknown kid (miss) happens at most once per MinRefresh,
// and after a failed fetch none is tried for MinRefresh.
func (k *remoteKeys) refresh(ctx context.Context, miss bool, seen *keySet) (*keySet, error) {
	ch := k.sf.DoChan("jwks", func() (any, error) {
		if cur := k.set.Load(); cur != nil && cur != seen {
			return cur, nil
		}
		now := k.o.now()
		k.mu.Lock()
		if !k.failedAt.IsZero() && now.Sub(k.failedAt) < k.o.minRefresh {
			err := k.lastErr
			k.mu.Unlock()
			return nil, err
		}
		if miss {
			if !k.lastMiss.IsZero() && now.Sub(k.lastMiss) < k.o.minRefresh {
				k.mu.Unlock()
				return nil, errTooSoon
			}
			k.lastMiss = now
		}
		k.mu.Unlock()

		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.o.timeout)
		defer cancel()
		set, err := k.fetch(fctx)
		k.mu.Lock()
		if err != nil {
			k.failedAt, k.lastErr = k.o.now(), err
		} else {
			k.failedAt, k.lastErr = time.Time{}, nil
		}
		k.mu.Unlock()
		if err != nil {
			return nil, err
		}
		k.set.Store(set)
		return set, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*keySet), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (k *remoteKeys) fetch(ctx context.Context) (*keySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := getJSON(ctx, k.hc, k.url, "application/jwk-set+json, application/json", &raw); err != nil {
		return nil, fmt.Errorf("verify: fetching the issuer's JWKS: %w", err)
	}
	set := &keySet{keys: make(map[string]crypto.PublicKey, len(raw.Keys)), fetched: k.o.now()}
	for _, r := range raw.Keys {
		// Parse key by key: one key of a kind we do not use (RSA, X25519, a future type) must not
		// hide the others.
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(r); err != nil {
			continue
		}
		if jwk.KeyID == "" || (jwk.Use != "" && jwk.Use != "sig") {
			continue
		}
		if _, dup := set.keys[jwk.KeyID]; dup {
			continue
		}
		if pub := signingKey(jwk.Public().Key); pub != nil {
			set.keys[jwk.KeyID] = pub
		}
	}
	return set, nil
}

// signingKey returns k when it is a key type access tokens may be signed with, else nil.
func signingKey(k any) crypto.PublicKey {
	switch k := k.(type) {
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return k
		}
	case *ecdsa.PublicKey:
		if k != nil && k.Curve == elliptic.P256() {
			return k
		}
	}
	return nil
}

const maxBody = 1 << 20

func getJSON(ctx context.Context, hc *http.Client, url, accept string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", accept)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if len(body) > maxBody {
		return fmt.Errorf("GET %s: response larger than %d bytes", url, maxBody)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// discoveredKeys is the default KeySource: it reads jwks_uri from the issuer's RFC 8414 metadata
// once, then delegates to RemoteKeys. A failed discovery is retried at most once per MinRefresh.
type discoveredKeys struct {
	issuer string
	hc     *http.Client
	opts   []Option
	o      options

	inner atomic.Pointer[KeySource]
	sf    singleflight.Group

	mu          sync.Mutex
	lastAttempt time.Time
	lastErr     error
}

func (d *discoveredKeys) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	if ks := d.inner.Load(); ks != nil {
		return (*ks).PublicKey(ctx, kid)
	}
	now := d.o.now()
	d.mu.Lock()
	if !d.lastAttempt.IsZero() && now.Sub(d.lastAttempt) < d.o.minRefresh && d.lastErr != nil {
		err := d.lastErr
		d.mu.Unlock()
		return nil, err
	}
	d.mu.Unlock()
	ch := d.sf.DoChan("metadata", func() (any, error) {
		if ks := d.inner.Load(); ks != nil {
			return nil, nil
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.o.timeout)
		defer cancel()
		jwksURI, err := discoverJWKS(fctx, d.hc, d.issuer)
		d.mu.Lock()
		d.lastAttempt, d.lastErr = d.o.now(), err
		d.mu.Unlock()
		if err != nil {
			return nil, err
		}
		ks := RemoteKeys(jwksURI, d.hc, d.opts...)
		d.inner.Store(&ks)
		return nil, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return (*d.inner.Load()).PublicKey(ctx, kid)
}

// MetadataPath is where an issuer publishes its RFC 8414 metadata, appended to the issuer.
const MetadataPath = "/.well-known/oauth-authorization-server"

func discoverJWKS(ctx context.Context, hc *http.Client, issuer string) (string, error) {
	var md struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	u := strings.TrimSuffix(issuer, "/") + MetadataPath
	if err := getJSON(ctx, hc, u, "application/json", &md); err != nil {
		return "", fmt.Errorf("verify: reading the issuer's metadata: %w", err)
	}
	if md.Issuer != issuer { // RFC 8414 §3.3
		return "", fmt.Errorf("verify: metadata at %s names issuer %q, want %q", u, md.Issuer, issuer)
	}
	if md.JWKSURI == "" {
		return "", fmt.Errorf("verify: metadata at %s has no jwks_uri", u)
	}
	return md.JWKSURI, nil
}
