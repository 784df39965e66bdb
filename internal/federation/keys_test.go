package federation_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

// keysEnv is a discovery issuer with one rule matching any sub under aud.
func keysEnv(t *testing.T, opts ...oidctest.Option) (*env, *oidctest.Issuer) {
	e := newEnv(t)
	iss := e.newIssuer(opts...)
	e.addIssuer(federation.Issuer{URL: iss.URL})
	e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, SubjectPrefix: "ci:"})
	return e, iss
}

func (e *env) wantReason(assertion, want string) {
	e.t.Helper()
	if _, got := e.match(assertion); got != want {
		e.t.Errorf("reason %q, want %q", got, want)
	}
}

func (e *env) wantFetches(iss *oidctest.Issuer, want int) {
	e.t.Helper()
	if got := iss.JWKSFetches(); got != want {
		e.t.Errorf("JWKS fetches = %d, want %d", got, want)
	}
}

func TestUnknownKIDRefreshesAtMostOncePerInterval(t *testing.T) {
	e, iss := keysEnv(t)
	token := iss.Mint(iss.Claims("ci:1", aud), oidctest.WithKID("unknown"))
	e.wantFetches(iss, 1) // AddIssuer proved the JWKS works, and its keys are cached
	e.wantReason(token, federation.ReasonUnknownKID)
	e.wantFetches(iss, 1) // AddIssuer's fetch was less than RefreshInterval ago
	e.clock.Advance(time.Minute)
	e.wantReason(token, federation.ReasonUnknownKID)
	e.wantFetches(iss, 2) // refreshed once, the kid is still unknown
	e.wantReason(token, federation.ReasonUnknownKID)
	e.wantFetches(iss, 2)
	if got := iss.DiscoveryFetches(); got != 1 {
		t.Errorf("discovery fetches = %d, want 1 (jwks_uri is cached)", got)
	}
}

func TestRotation(t *testing.T) {
	e, iss := keysEnv(t)
	old := iss.Key("RS256")
	oldToken := func() string { return iss.Mint(iss.Claims("ci:1", aud), oidctest.SignedBy(old)) }
	e.wantReason(oldToken(), "")

	iss.Rotate()
	newToken := func() string { return iss.Mint(iss.Claims("ci:1", aud)) }
	// Within RefreshInterval of the last fetch, a new kid is unknown: no fetch.
	e.wantReason(newToken(), federation.ReasonUnknownKID)
	e.wantFetches(iss, 1)
	e.wantReason(oldToken(), "") // the old key is still cached

	e.clock.Advance(61 * time.Second)
	e.wantReason(newToken(), "") // unknown kid → refresh → the new key
	e.wantFetches(iss, 2)
	e.wantReason(oldToken(), federation.ReasonUnknownKID) // the refresh dropped the old key
	e.wantFetches(iss, 2)
}

func TestUnknownKIDFlood(t *testing.T) {
	e, iss := keysEnv(t)
	claims := iss.Claims("ci:1", aud)
	flood := func(concurrent bool) {
		var wg sync.WaitGroup
		for i := range 500 {
			token := iss.Mint(claims, oidctest.WithKID(fmt.Sprintf("random-%d-%d", i, time.Now().UnixNano())))
			if !concurrent {
				e.wantReason(token, federation.ReasonUnknownKID)
				continue
			}
			wg.Go(func() {
				if _, reason := e.match(token); reason != federation.ReasonUnknownKID {
					t.Errorf("reason %q, want unknown_kid", reason)
				}
			})
		}
		wg.Wait()
	}

	flood(false)
	flood(true)
	e.wantFetches(iss, 1) // within the window of AddIssuer's fetch: none

	e.clock.Advance(61 * time.Second)
	flood(true)
	e.wantFetches(iss, 2) // one fetch, shared
	flood(false)
	e.wantFetches(iss, 2)

	e.clock.Advance(61 * time.Second)
	flood(false)
	e.wantFetches(iss, 3)
	flood(true)
	e.wantFetches(iss, 3)
	e.wantReason(iss.Mint(claims), "") // the real keys still work
}

func TestKeyCacheLifetime(t *testing.T) {
	e, iss := keysEnv(t, oidctest.WithMaxAge(10*time.Minute))
	token := func() string { return iss.Mint(iss.Claims("ci:1", aud)) }
	e.wantReason(token(), "")
	e.clock.Advance(9 * time.Minute)
	e.wantReason(token(), "")
	e.wantFetches(iss, 1)
	e.clock.Advance(2 * time.Minute) // past max-age: refetched
	e.wantReason(token(), "")
	e.wantFetches(iss, 2)

	// The issuer goes down: expired keys stay in use, with one refetch per RefreshInterval.
	iss.SetFailing(true)
	e.clock.Advance(11 * time.Minute)
	e.wantReason(token(), "")
	e.wantFetches(iss, 3)
	e.wantReason(token(), "")
	e.wantFetches(iss, 3)
	e.clock.Advance(23 * time.Hour)
	e.wantReason(token(), "")
	// After a failed JWKS fetch the issuer is discovered again: its keys may have moved.
	if got := iss.DiscoveryFetches(); got != 2 {
		t.Errorf("discovery fetches = %d, want 2", got)
	}
	e.clock.Advance(2 * time.Hour) // more than 24h past expiry
	e.wantReason(token(), federation.ReasonKeysUnavailable)

	iss.SetFailing(false)
	e.clock.Advance(time.Minute)
	e.wantReason(token(), "")
}

func TestKeyCacheLifetimeClamped(t *testing.T) {
	for name, tc := range map[string]struct {
		maxAge      time.Duration
		fresh, gone time.Duration // still cached after fresh, refetched after gone
	}{
		"max-age 0 → 5m":     {maxAge: 0, fresh: 4 * time.Minute, gone: 6 * time.Minute},
		"max-age 1m → 5m":    {maxAge: time.Minute, fresh: 4 * time.Minute, gone: 6 * time.Minute},
		"max-age 7d → 24h":   {maxAge: 7 * 24 * time.Hour, fresh: 23 * time.Hour, gone: 25 * time.Hour},
		"no header → 1h":     {maxAge: -1, fresh: 59 * time.Minute, gone: 61 * time.Minute},
		"max-age 2h is kept": {maxAge: 2 * time.Hour, fresh: 119 * time.Minute, gone: 121 * time.Minute},
	} {
		t.Run(name, func(t *testing.T) {
			e, iss := keysEnv(t, oidctest.WithMaxAge(tc.maxAge))
			e.clock.Advance(tc.fresh)
			e.wantReason(iss.Mint(iss.Claims("ci:1", aud)), "")
			e.wantFetches(iss, 1)
			e.clock.Advance(tc.gone - tc.fresh)
			e.wantReason(iss.Mint(iss.Claims("ci:1", aud)), "")
			e.wantFetches(iss, 2)
		})
	}
}

func TestPinnedJWKS(t *testing.T) {
	e := newEnv(t)
	signer := e.newIssuer() // only its keys and minting are used: nothing is fetched
	const url = "https://issuer.pinned.example"
	e.addIssuer(federation.Issuer{URL: url, JWKS: signer.JWKS()})
	e.addRule(federation.Rule{Issuer: url, Audience: aud, SubjectPrefix: "ci:"})
	claims := signer.Claims("ci:1", aud)
	claims["iss"] = url

	e.wantReason(signer.Mint(claims), "")
	e.wantReason(signer.Mint(claims, oidctest.WithAlg("ES256")), "")
	e.clock.Advance(time.Hour)
	e.wantReason(signer.Mint(signer.Claims("x", aud), oidctest.WithKID("other")), federation.ReasonUnknownIssuer)
	e.wantReason(signer.Mint(claims, oidctest.WithKID("other")), federation.ReasonUnknownKID)
	e.wantReason(signer.Mint(claims, oidctest.SignedBy(oidctest.NewKey(t, "ES256"))), federation.ReasonUnknownKID)
	if signer.JWKSFetches()+signer.DiscoveryFetches() != 0 {
		t.Errorf("a pinned issuer was fetched: %d JWKS, %d discovery", signer.JWKSFetches(), signer.DiscoveryFetches())
	}
}

// A SPIFFE trust bundle in JWKS form: jwt-svid keys sign JWT-SVIDs; x509-svid keys, symmetric
// keys, keys with private parts and small RSA keys are skipped.
func TestSPIFFEBundle(t *testing.T) {
	e := newEnv(t)
	signer := e.newIssuer(oidctest.WithAlgs("ES256"))
	svid := signer.Keys()[0]
	x509Key := oidctest.NewKey(t, "ES256")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	private, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk := func(key any, kid, use string) json.RawMessage {
		b, err := json.Marshal(jose.JSONWebKey{Key: key, KeyID: kid, Use: use})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	bundle, err := json.Marshal(map[string]any{
		"spiffe_sequence":     42,
		"spiffe_refresh_hint": 300,
		"keys": []json.RawMessage{
			jwk(x509Key.Signer.Public(), x509Key.KID, "x509-svid"),
			jwk(svid.Signer.Public(), svid.KID, "jwt-svid"),
			jwk(small.Public(), "small", "jwt-svid"),
			jwk(private, "private", "jwt-svid"),
			json.RawMessage(`{"kty":"oct","kid":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}`),
			json.RawMessage(`{"kty":"ML-KEM","kid":"future","use":"jwt-svid"}`),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	const url = "https://spire.example.org"
	e.addIssuer(federation.Issuer{URL: url, JWKS: bundle, MaxAssertionLifetime: 5 * time.Minute})
	e.addRule(federation.Rule{Issuer: url, Audience: aud, SubjectPrefix: "spiffe://example.org/ns/prod/"})
	claims := func() map[string]any {
		c := signer.Claims("spiffe://example.org/ns/prod/sa/api", aud)
		c["iss"] = url
		delete(c, "jti") // JWT-SVIDs usually have none
		return c
	}
	e.wantReason(signer.Mint(claims()), "")
	e.wantReason(signer.Mint(claims(), oidctest.SignedBy(x509Key)), federation.ReasonUnknownKID)
	e.wantReason(signer.Mint(claims(), oidctest.WithHMAC("HS256", []byte("secretsecretsecretsecretsecretsecret")), oidctest.WithKID("oct")), federation.ReasonAlg)
	e.wantReason(signer.Mint(claims(), oidctest.SignedBy(&oidctest.Key{KID: "small", Alg: "RS256", Signer: small})), federation.ReasonUnknownKID)
	e.wantReason(signer.Mint(claims(), oidctest.SignedBy(&oidctest.Key{KID: "private", Alg: "ES256", Signer: private})), federation.ReasonUnknownKID)
}
