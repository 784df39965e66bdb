// Package oidctest runs a test OIDC issuer on 127.0.0.1: a discovery document, a JWKS with
// counters and a configurable Cache-Control, keys of every algorithm federation accepts, and
// tokens minted with them — or forged, with any header — for tests of workload identity
// federation and the jwt-bearer grant.
package oidctest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Paths served by the issuer.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/jwks"
)

// Issuer is a running test issuer.
type Issuer struct {
	URL string // the issuer URL: http://127.0.0.1:PORT, also the iss of minted tokens

	t               testing.TB
	now             func() time.Time
	maxAge          time.Duration // < 0: no Cache-Control header
	discoveryIssuer string        // the issuer the discovery document names; "" = URL

	mu      sync.Mutex
	keys    []*Key
	failing bool

	jwksFetches, discoveryFetches atomic.Int64
}

// Option configures New.
type Option func(*Issuer)

// WithAlgs sets the algorithms of the issuer's first keys, one key each (default RS256 and
// ES256).
func WithAlgs(algs ...string) Option {
	return func(is *Issuer) {
		is.keys = nil
		for _, alg := range algs {
			is.keys = append(is.keys, NewKey(is.t, alg))
		}
	}
}

// WithMaxAge sets the JWKS's Cache-Control max-age (default: no Cache-Control header).
func WithMaxAge(d time.Duration) Option { return func(is *Issuer) { is.maxAge = d } }

// WithClock sets the clock of the claims helpers (default time.Now).
func WithClock(now func() time.Time) Option { return func(is *Issuer) { is.now = now } }

// WithDiscoveryIssuer makes the discovery document name another issuer, as a misconfigured or
// impersonating issuer would.
func WithDiscoveryIssuer(iss string) Option { return func(is *Issuer) { is.discoveryIssuer = iss } }

// New starts an issuer, stopped when the test ends.
func New(t testing.TB, opts ...Option) *Issuer {
	t.Helper()
	is := &Issuer{t: t, now: time.Now, maxAge: -1}
	is.keys = []*Key{NewKey(t, "RS256"), NewKey(t, "ES256")}
	for _, o := range opts {
		o(is)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+DiscoveryPath, is.serveDiscovery)
	mux.HandleFunc("GET "+JWKSPath, is.serveJWKS)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	is.URL = srv.URL
	return is
}

func (is *Issuer) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	is.discoveryFetches.Add(1)
	if is.isFailing() {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	iss := is.discoveryIssuer
	if iss == "" {
		iss = is.URL
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer":                                iss,
		"jwks_uri":                              is.URL + JWKSPath,
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
	})
}

func (is *Issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	is.jwksFetches.Add(1)
	if is.isFailing() {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	if is.maxAge >= 0 {
		w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(int(is.maxAge/time.Second)))
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	_, _ = w.Write(is.JWKS())
}

func (is *Issuer) isFailing() bool {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.failing
}

// SetFailing makes discovery and the JWKS answer 503 (true) or work again (false).
func (is *Issuer) SetFailing(failing bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.failing = failing
}

// JWKS is the key set the issuer serves now.
func (is *Issuer) JWKS() []byte {
	is.mu.Lock()
	defer is.mu.Unlock()
	return KeySet(is.keys...)
}

// KeySet returns the JWKS of the public halves of keys.
func KeySet(keys ...*Key) []byte {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public())
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic("oidctest: marshal JWKS: " + err.Error())
	}
	return b
}

// JWKSFetches counts the requests for the JWKS so far.
func (is *Issuer) JWKSFetches() int { return int(is.jwksFetches.Load()) }

// DiscoveryFetches counts the requests for the discovery document so far.
func (is *Issuer) DiscoveryFetches() int { return int(is.discoveryFetches.Load()) }

// Keys returns the issuer's current keys.
func (is *Issuer) Keys() []*Key {
	is.mu.Lock()
	defer is.mu.Unlock()
	return append([]*Key(nil), is.keys...)
}

// Key returns the issuer's first current key of alg, adding one when there is none.
func (is *Issuer) Key(alg string) *Key {
	is.mu.Lock()
	for _, k := range is.keys {
		if k.Alg == alg {
			is.mu.Unlock()
			return k
		}
	}
	is.mu.Unlock()
	return is.AddKey(alg)
}

// AddKey adds a new key of alg (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA or Ed25519)
// to the issuer's JWKS.
func (is *Issuer) AddKey(alg string) *Key {
	k := NewKey(is.t, alg)
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = append(is.keys, k)
	return k
}

// Rotate replaces every key by a new one of the same algorithm; the old keys leave the JWKS.
func (is *Issuer) Rotate() {
	is.mu.Lock()
	defer is.mu.Unlock()
	for i, k := range is.keys {
		is.keys[i] = NewKey(is.t, k.Alg)
	}
}
