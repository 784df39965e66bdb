package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mandate-dev/mandate/dpop"
)

// rs is a resource server protected by a Verifier, on a real listener.
type rs struct {
	t   *testing.T
	is  *testIssuer
	v   *Verifier
	srv *httptest.Server

	mu     sync.Mutex
	denied []*Error
}

func newRS(t *testing.T, is *testIssuer, mod func(*Config)) *rs {
	t.Helper()
	h := &rs{t: t, is: is}
	cfg := Config{
		Issuer:   is.url,
		Audience: testAudience,
		OnDeny: func(r *http.Request, e *Error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.denied = append(h.denied, e)
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.v = v
	h.srv = httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := CallerFrom(r.Context())
		if !ok {
			http.Error(w, "no caller", http.StatusInternalServerError)
			return
		}
		writeJSON(w, c)
	})))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *rs) lastDenied() *Error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.denied) == 0 {
		return nil
	}
	return h.denied[len(h.denied)-1]
}

// proof makes a DPoP proof by key for method and the RS's path.
func (h *rs) proof(key ed25519.PrivateKey, method, path, tok string, now time.Time) string {
	h.t.Helper()
	p, err := dpop.NewProof(key, method, h.srv.URL+path, dpop.ProofOptions{AccessToken: tok, Now: now})
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

// send sends method path with the given Authorization and DPoP headers (nil = absent).
func (h *rs) send(method, path string, auth []string, proofs []string) *http.Response {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, a := range auth {
		req.Header.Add("Authorization", a)
	}
	for _, p := range proofs {
		req.Header.Add("DPoP", p)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// ok sends a valid request for tok by key.
func (h *rs) ok(key ed25519.PrivateKey, tok string) *http.Response {
	h.t.Helper()
	return h.send("GET", "/data", []string{"DPoP " + tok}, []string{h.proof(key, "GET", "/data", tok, time.Time{})})
}

type refusal struct {
	Status int
	Code   string
	Reason string
}

func TestVerifyRefusals(t *testing.T) {
	type request struct {
		method string
		path   string
		auth   []string
		proofs []string
	}
	tests := map[string]struct {
		// build returns the request to send; it may change the issuer first.
		build func(t *testing.T, h *rs, a *agent) request
		want  refusal
	}{
		"no credentials": {
			build: func(t *testing.T, h *rs, a *agent) request { return request{method: "GET", path: "/data"} },
			want:  refusal{401, "invalid_token", "missing"},
		},
		"bearer": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"Bearer " + tok}, nil}
			},
			want: refusal{401, "invalid_token", "bearer"},
		},
		"other scheme": {
			build: func(t *testing.T, h *rs, a *agent) request {
				return request{"GET", "/data", []string{"Basic YTpi"}, nil}
			},
			want: refusal{401, "invalid_token", "scheme"},
		},
		"two authorization headers": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok, "DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "malformed"},
		},
		"no proof": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, nil}
			},
			want: refusal{401, "invalid_dpop_proof", "missing_proof"},
		},
		"two proofs": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				p := h.proof(a.key, "GET", "/data", tok, time.Time{})
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{p, p}}
			},
			want: refusal{401, "invalid_dpop_proof", "multiple_proofs"},
		},
		"replayed proof": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				p := h.proof(a.key, "GET", "/data", tok, time.Time{})
				if resp := h.send("GET", "/data", []string{"DPoP " + tok}, []string{p}); resp.StatusCode != 200 {
					t.Fatalf("first use: status %d, want 200", resp.StatusCode)
				}
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{p}}
			},
			want: refusal{401, "invalid_dpop_proof", "replay"},
		},
		"wrong htm": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"POST", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_dpop_proof", "htm"},
		},
		"wrong htu": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/other", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_dpop_proof", "htu"},
		},
		"proof iat too old": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Now().Add(-10*time.Minute))}}
			},
			want: refusal{401, "invalid_dpop_proof", "iat"},
		},
		"proof iat in the future": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Now().Add(10*time.Minute))}}
			},
			want: refusal{401, "invalid_dpop_proof", "iat"},
		},
		"proof by another key": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(newEd25519(t), "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_dpop_proof", "key_mismatch"},
		},
		"proof without ath": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", "", time.Time{})}}
			},
			want: refusal{401, "invalid_dpop_proof", "ath"},
		},
		"proof with ath of another token": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				other := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", other, time.Time{})}}
			},
			want: refusal{401, "invalid_dpop_proof", "ath"},
		},
		"private key in proof jwk": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				pub := a.key.Public().(ed25519.PublicKey)
				hdr := map[string]any{"typ": "dpop+jwt", "alg": "EdDSA", "jwk": map[string]any{
					"kty": "OKP", "crv": "Ed25519", "x": b64(pub), "d": b64(a.key.Seed()),
				}}
				payload, _ := json.Marshal(map[string]any{
					"jti": "p1", "htm": "GET", "htu": h.srv.URL + "/data", "iat": time.Now().Unix(),
					"ath": dpop.AccessTokenHash(tok),
				})
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{signCompact(t, a.key, hdr, payload)}}
			},
			want: refusal{401, "invalid_dpop_proof", "jwk_private"},
		},
		"alg none": {
			build: func(t *testing.T, h *rs, a *agent) request {
				hdr, _ := json.Marshal(map[string]any{"alg": "none", "typ": "at+jwt", "kid": "k1"})
				payload, _ := json.Marshal(h.is.claims(a))
				tok := b64(hdr) + "." + b64(payload) + "."
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "alg"},
		},
		"HS256 with the public key as secret": {
			build: func(t *testing.T, h *rs, a *agent) request {
				hdr, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": "k1"})
				payload, _ := json.Marshal(h.is.claims(a))
				input := b64(hdr) + "." + b64(payload)
				mac := hmac.New(sha256.New, h.is.keys["k1"].Public().(ed25519.PublicKey))
				mac.Write([]byte(input))
				tok := input + "." + b64(mac.Sum(nil))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "alg"},
		},
		"not a JWS": {
			build: func(t *testing.T, h *rs, a *agent) request {
				return request{"GET", "/data", []string{"DPoP abc.def"}, []string{h.proof(a.key, "GET", "/data", "abc.def", time.Time{})}}
			},
			want: refusal{401, "invalid_token", "malformed"},
		},
		"typ JWT": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "JWT", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "typ"},
		},
		"bad signature": {
			build: func(t *testing.T, h *rs, a *agent) request {
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				c := h.is.claims(a)
				c["scope"] = "admin"
				forged := h.is.mint("k1", "EdDSA", "at+jwt", c)
				// the claims of one token with the signature of another
				parts, fparts := strings.Split(tok, "."), strings.Split(forged, ".")
				tok = parts[0] + "." + fparts[1] + "." + parts[2]
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "signature"},
		},
		"expired token": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				c["iat"] = time.Now().Add(-10 * time.Minute).Unix()
				c["exp"] = time.Now().Add(-time.Minute).Unix()
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "expired"},
		},
		"nbf in the future": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				c["nbf"] = time.Now().Add(2 * time.Minute).Unix()
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "not_yet_valid"},
		},
		"token iat in the future": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				c["iat"] = time.Now().Add(2 * time.Minute).Unix()
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "not_yet_valid"},
		},
		"other audience": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				c["aud"] = "https://other.example"
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "audience"},
		},
		"other issuer": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				c["iss"] = "https://evil.example"
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "issuer"},
		},
		"not DPoP-bound": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				delete(c, "cnf")
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "unbound"},
		},
		"no jti": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				delete(c, "jti")
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "claims"},
		},
		"unknown kid, after a JWKS refetch": {
			build: func(t *testing.T, h *rs, a *agent) request {
				// Warm the key cache, then present a kid the issuer does not publish.
				if resp := h.ok(a.key, h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))); resp.StatusCode != 200 {
					t.Fatalf("warm-up: status %d", resp.StatusCode)
				}
				if got := h.is.jwksHits.Load(); got != 1 {
					t.Fatalf("JWKS fetched %d times after warm-up, want 1", got)
				}
				t.Cleanup(func() {
					if got := h.is.jwksHits.Load(); got != 2 {
						t.Errorf("JWKS fetched %d times, want 2 (one refetch for the unknown kid)", got)
					}
				})
				tok := h.is.mint("k9", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "unknown_kid"},
		},
		"revoked agent": {
			build: func(t *testing.T, h *rs, a *agent) request {
				h.is.revokeAgent(a.id)
				tok := h.is.mint("k1", "EdDSA", "at+jwt", h.is.claims(a))
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "revoked"},
		},
		"revoked agent earlier in the delegation chain": {
			build: func(t *testing.T, h *rs, a *agent) request {
				h.is.revokeAgent("agt_parent")
				c := h.is.claims(a)
				c["sub"] = "usr_alice"
				c["act"] = map[string]any{"sub": a.id, "act": map[string]any{"sub": "agt_parent"}}
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "revoked"},
		},
		"revoked token": {
			build: func(t *testing.T, h *rs, a *agent) request {
				c := h.is.claims(a)
				h.is.revokeJTI(c["jti"].(string))
				tok := h.is.mint("k1", "EdDSA", "at+jwt", c)
				return request{"GET", "/data", []string{"DPoP " + tok}, []string{h.proof(a.key, "GET", "/data", tok, time.Time{})}}
			},
			want: refusal{401, "invalid_token", "revoked"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			is := newTestIssuer(t)
			h := newRS(t, is, nil)
			a := newAgent(t, "agt_"+strings.ReplaceAll(name, " ", "_"))
			req := tc.build(t, h, a)
			resp := h.send(req.method, req.path, req.auth, req.proofs)

			d := h.lastDenied()
			if d == nil {
				t.Fatalf("status %d and OnDeny not called; want a refusal %+v", resp.StatusCode, tc.want)
			}
			got := refusal{resp.StatusCode, d.Code, d.Reason}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("refusal mismatch (-want +got):\n%s\ndescription: %s", diff, d.Description)
			}
			checkChallenge(t, resp, d, req.auth)
			checkDeniedCaller(t, d, a.id)
		})
	}
}

// tokenRefusals are the reasons given when the token's signature and claims have not verified:
// such a refusal names no Caller. Every other refusal (the proof, the status, a scope) does, and
// so does a refusal of how a token was presented (presentationRefusals) when its token verifies.
var tokenRefusals = map[string]bool{
	ReasonMissing: true, ReasonMalformed: true, ReasonAlg: true, ReasonTyp: true, ReasonUnknownKID: true,
	ReasonSignature: true, ReasonIssuer: true, ReasonAudience: true, ReasonExpired: true,
	ReasonNotYetValid: true, ReasonClaims: true, ReasonUnbound: true, ReasonKeysUnavailable: true,
}

// presentationRefusals are the reasons given before the proof is looked at, about how the token
// was sent; they name the token's Caller when it verifies on its own (TestPresentationRefusalAttributed).
var presentationRefusals = map[string]bool{
	ReasonBearer: true, ReasonScheme: true, ReasonMissingProof: true, ReasonMultipleProofs: true,
}

// checkDeniedCaller: OnDeny learns whose token was refused exactly when its signature and claims
// verified, so the refusal can be attributed; a forged or malformed token names nobody. In
// TestVerifyRefusals every presentation refusal sends a valid token, except "other scheme"
// (Basic credentials, not a token).
func checkDeniedCaller(t *testing.T, d *Error, agentID string) {
	t.Helper()
	named := !tokenRefusals[d.Reason]
	if presentationRefusals[d.Reason] {
		named = d.Reason != ReasonScheme
	}
	switch {
	case !named && d.Caller != nil:
		t.Errorf("refusal %q before the token verified names a caller %+v", d.Reason, d.Caller)
	case named && d.Caller == nil:
		t.Errorf("refusal %q of a verified token names no caller", d.Reason)
	case d.Caller != nil && d.Caller.AgentID != agentID:
		t.Errorf("refusal %q names agent %s, want %s", d.Reason, d.Caller.AgentID, agentID)
	}
}

// checkChallenge checks the WWW-Authenticate header and JSON body of a refusal.
func checkChallenge(t *testing.T, resp *http.Response, d *Error, auth []string) {
	t.Helper()
	wa := resp.Header.Get("WWW-Authenticate")
	if d.Code == "invalid_token" && d.Reason == "missing" {
		if want := `DPoP algs="EdDSA Ed25519 ES256"`; wa != want {
			t.Errorf("WWW-Authenticate = %q, want %q (no error code without credentials)", wa, want)
		}
	} else {
		want := `DPoP error="` + d.Code + `", error_description="` + d.Description + `", algs="EdDSA Ed25519 ES256"`
		if wa != want {
			t.Errorf("WWW-Authenticate = %q, want %q", wa, want)
		}
	}
	for _, a := range auth {
		if _, tok, _ := strings.Cut(a, " "); len(tok) > 8 && strings.Contains(wa, tok) {
			t.Errorf("WWW-Authenticate contains the token")
		}
	}
	var body struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("body: %v", err)
	}
	if body.Error != d.Code || body.Description != d.Description {
		t.Errorf("body = %+v, want error %q", body, d.Code)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}
}

func TestVerifyAccepts(t *testing.T) {
	is := newTestIssuer(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	is.addKey("ec1", ecKey)
	a := newAgent(t, "agt_reader")

	tests := map[string]struct {
		kid, alg, typ string
	}{
		"EdDSA":                      {"k1", "EdDSA", "at+jwt"},
		"Ed25519 (RFC 9864)":         {"k1", "Ed25519", "at+jwt"},
		"ES256":                      {"ec1", "ES256", "at+jwt"},
		"typ application/at+jwt":     {"k1", "EdDSA", "application/at+jwt"},
		"typ in another letter case": {"k1", "EdDSA", "AT+JWT"},
	}
	h := newRS(t, is, nil)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			claims := is.claims(a)
			tok := is.mint(tc.kid, tc.alg, tc.typ, claims)
			resp := h.ok(a.key, tok)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200; denied: %+v", resp.StatusCode, h.lastDenied())
			}
			var got Caller
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			want := Caller{
				Subject:   a.id,
				ClientID:  a.id,
				AgentID:   a.id,
				Handle:    "researcher",
				DID:       "did:key:z6Mk-test",
				JTI:       claims["jti"].(string),
				JKT:       a.jkt,
				Scopes:    []string{"read", "write"},
				Audience:  []string{testAudience, "https://other.example"},
				IssuedAt:  time.Unix(claims["iat"].(int64), 0),
				ExpiresAt: time.Unix(claims["exp"].(int64), 0),
				Chain:     []Actor{{AgentID: a.id, Handle: "researcher", DID: "did:key:z6Mk-test"}},
			}
			if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Caller{}, "Claims", "ProofID", "ProofExpiresAt"), cmpopts.EquateApproxTime(0)); diff != "" {
				t.Errorf("caller mismatch (-want +got):\n%s", diff)
			}
			// The proof's id as the replay store recorded it, for a resource that uses it up
			// in its own transaction: the key's thumbprint and the jti, kept past the window.
			if jti, ok := strings.CutPrefix(got.ProofID, a.jkt+":"); !ok || jti == "" {
				t.Errorf("ProofID = %q, want %s:<jti>", got.ProofID, a.jkt)
			}
			if !got.ProofExpiresAt.After(time.Now()) {
				t.Errorf("ProofExpiresAt = %v, want after now", got.ProofExpiresAt)
			}
			if got.Claims["handle"] != "researcher" {
				t.Errorf("raw claims not kept: %v", got.Claims)
			}
		})
	}
}

func TestVerifyBaseURL(t *testing.T) {
	is := newTestIssuer(t)
	a := newAgent(t, "agt_proxy")
	// Behind a proxy, clients sign the public URL, not the one the server sees.
	h := newRS(t, is, func(c *Config) { c.BaseURL = "https://api.example.com/" })
	tok := is.mint("k1", "EdDSA", "at+jwt", is.claims(a))
	p, err := dpop.NewProof(a.key, "GET", "https://api.example.com/data?x=1", dpop.ProofOptions{AccessToken: tok})
	if err != nil {
		t.Fatal(err)
	}
	if resp := h.send("GET", "/data?x=1", []string{"DPoP " + tok}, []string{p}); resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200; denied %+v", resp.StatusCode, h.lastDenied())
	}
	// A proof for the listener's own URL is for another resource.
	if resp := h.ok(a.key, tok); resp.StatusCode != 401 || h.lastDenied().Reason != "htu" {
		t.Fatalf("status %d, denied %+v; want 401 htu", resp.StatusCode, h.lastDenied())
	}
}

func TestVerifyInsufficientScope(t *testing.T) {
	is := newTestIssuer(t)
	a := newAgent(t, "agt_reader")
	h := newRS(t, is, func(c *Config) { c.RequiredScopes = []string{"read", "admin"} })
	resp := h.ok(a.key, is.mint("k1", "EdDSA", "at+jwt", is.claims(a)))
	d := h.lastDenied()
	if resp.StatusCode != 403 || d == nil || d.Code != "insufficient_scope" || d.Reason != "scope" {
		t.Fatalf("status %d, denied %+v; want 403 insufficient_scope", resp.StatusCode, d)
	}
	want := `DPoP error="insufficient_scope", error_description="` + d.Description + `", scope="read admin", algs="EdDSA Ed25519 ES256"`
	if got := resp.Header.Get("WWW-Authenticate"); got != want {
		t.Errorf("WWW-Authenticate = %q, want %q", got, want)
	}
}

func TestVerifyNonce(t *testing.T) {
	is := newTestIssuer(t)
	a := newAgent(t, "agt_nonce")
	nonces := dpop.NewNonces(randomBytes(32), time.Minute, nil)
	h := newRS(t, is, func(c *Config) { c.DPoP.Nonces = nonces })
	tok := is.mint("k1", "EdDSA", "at+jwt", is.claims(a))

	resp := h.ok(a.key, tok)
	d := h.lastDenied()
	if resp.StatusCode != 401 || d == nil || d.Code != "use_dpop_nonce" {
		t.Fatalf("status %d, denied %+v; want 401 use_dpop_nonce", resp.StatusCode, d)
	}
	nonce := resp.Header.Get("DPoP-Nonce")
	if nonce == "" || nonce != d.Nonce {
		t.Fatalf("DPoP-Nonce = %q, Error.Nonce = %q", nonce, d.Nonce)
	}
	checkChallenge(t, resp, d, nil)

	p, err := dpop.NewProof(a.key, "GET", h.srv.URL+"/data", dpop.ProofOptions{AccessToken: tok, Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	resp = h.send("GET", "/data", []string{"DPoP " + tok}, []string{p})
	if resp.StatusCode != 200 {
		t.Fatalf("with the nonce: status %d, denied %+v", resp.StatusCode, h.lastDenied())
	}
	if resp.Header.Get("DPoP-Nonce") == "" {
		t.Errorf("no fresh DPoP-Nonce on success")
	}
}

func TestVerifyFailsClosed(t *testing.T) {
	t.Run("JWKS unreachable", func(t *testing.T) {
		is := newTestIssuer(t)
		is.setFailing(true, false)
		a := newAgent(t, "agt_x")
		h := newRS(t, is, nil)
		resp := h.ok(a.key, is.mint("k1", "EdDSA", "at+jwt", is.claims(a)))
		if d := h.lastDenied(); resp.StatusCode != 503 || d.Reason != "keys_unavailable" {
			t.Fatalf("status %d, denied %+v; want 503 keys_unavailable", resp.StatusCode, d)
		}
	})
	t.Run("revocation feed unreachable", func(t *testing.T) {
		is := newTestIssuer(t)
		is.setFailing(false, true)
		a := newAgent(t, "agt_x")
		h := newRS(t, is, nil)
		resp := h.ok(a.key, is.mint("k1", "EdDSA", "at+jwt", is.claims(a)))
		if d := h.lastDenied(); resp.StatusCode != 503 || d.Reason != "status_unavailable" {
			t.Fatalf("status %d, denied %+v; want 503 status_unavailable", resp.StatusCode, d)
		}
	})
}

func TestVerifyKeyRotation(t *testing.T) {
	// "Publish, then sign": a token signed by a key published after the verifier cached the JWKS
	// is accepted after one refetch.
	is := newTestIssuer(t)
	a := newAgent(t, "agt_rot")
	h := newRS(t, is, nil)
	if resp := h.ok(a.key, is.mint("k1", "EdDSA", "at+jwt", is.claims(a))); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	is.addKey("k2", newEd25519(t))
	if resp := h.ok(a.key, is.mint("k2", "EdDSA", "at+jwt", is.claims(a))); resp.StatusCode != 200 {
		t.Fatalf("new key: status %d, denied %+v", resp.StatusCode, h.lastDenied())
	}
	if got := is.jwksHits.Load(); got != 2 {
		t.Errorf("JWKS fetched %d times, want 2", got)
	}
	if got := is.mdHits.Load(); got != 1 {
		t.Errorf("metadata fetched %d times, want 1", got)
	}
}

func TestNewConfigErrors(t *testing.T) {
	_, err := New(Config{Algs: []string{"none", "HS256"}, BaseURL: "api.example.com"})
	if err == nil {
		t.Fatal("New accepted an invalid config")
	}
	for _, want := range []string{"Issuer is required", "Audience is required", `"none"`, `"HS256"`, "BaseURL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestRemoteKeysRefetchRateLimit(t *testing.T) {
	is := newTestIssuer(t)
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	ks := RemoteKeys(is.url+"/oauth/jwks", nil, WithNow(clock), WithMinRefresh(10*time.Second))
	ctx := context.Background()

	if _, err := ks.PublicKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	// A burst of concurrent misses: one refetch, then none within MinRefresh.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ks.PublicKey(ctx, "nope"); !errors.Is(err, ErrUnknownKey) {
				t.Errorf("err = %v, want ErrUnknownKey", err)
			}
		}()
	}
	wg.Wait()
	if _, err := ks.PublicKey(ctx, "nope2"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("err = %v, want ErrUnknownKey", err)
	}
	if got := is.jwksHits.Load(); got != 2 {
		t.Fatalf("JWKS fetched %d times, want 2 (one coalesced refetch within MinRefresh)", got)
	}

	advance(11 * time.Second)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = ks.PublicKey(ctx, "nope")
		}()
	}
	wg.Wait()
	if got := is.jwksHits.Load(); got != 3 {
		t.Fatalf("JWKS fetched %d times, want 3 (one coalesced refetch after MinRefresh)", got)
	}

	// Known keys never cause a fetch.
	for i := 0; i < 10; i++ {
		if _, err := ks.PublicKey(ctx, "k1"); err != nil {
			t.Fatal(err)
		}
	}
	if got := is.jwksHits.Load(); got != 3 {
		t.Fatalf("JWKS fetched %d times for a known kid", got)
	}

	// A withdrawn key stops working once the cached set is older than MaxAge.
	is.mu.Lock()
	delete(is.keys, "k1")
	is.mu.Unlock()
	advance(11 * time.Minute)
	if _, err := ks.PublicKey(ctx, "k1"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("withdrawn key: err = %v, want ErrUnknownKey", err)
	}
}

func TestRemoteKeysCoalescesFirstFetch(t *testing.T) {
	is := newTestIssuer(t)
	ks := RemoteKeys(is.url+"/oauth/jwks", nil)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := ks.PublicKey(context.Background(), "k1"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Callers that arrive after the first fetch completes hit the cache; the ones that
	// overlapped share the one request.
	if got := is.jwksHits.Load(); got != 1 {
		t.Fatalf("JWKS fetched %d times, want 1", got)
	}
}

func TestRevocationFeedStaleness(t *testing.T) {
	is := newTestIssuer(t)
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	feed := RevocationFeed(is.url+"/v1/revocations", nil, time.Second, WithNow(clock))
	ctx := context.Background()
	c := &Caller{AgentID: "agt_a", ClientID: "agt_a", Subject: "agt_a", JTI: "t1"}

	if err := feed.Check(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := feed.Check(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got := is.feedHits.Load(); got != 1 {
		t.Fatalf("feed fetched %d times within maxAge, want 1", got)
	}

	is.revokeJTI("t1")
	advance(1500 * time.Millisecond)
	if err := feed.Check(ctx, c); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after maxAge: err = %v, want ErrRevoked", err)
	}

	// The feed goes down: the last copy is used for up to a minute after it was fetched.
	c2 := &Caller{AgentID: "agt_b", ClientID: "agt_b", Subject: "agt_b", JTI: "t2"}
	is.setFailing(false, true)
	advance(30 * time.Second)
	if err := feed.Check(ctx, c2); err != nil {
		t.Fatalf("within the stale window: err = %v, want nil", err)
	}
	if err := feed.Check(ctx, c); !errors.Is(err, ErrRevoked) {
		t.Fatalf("within the stale window: err = %v, want ErrRevoked", err)
	}
	advance(31 * time.Second)
	err := feed.Check(ctx, c2)
	if err == nil || errors.Is(err, ErrRevoked) {
		t.Fatalf("after the stale window: err = %v, want an unavailable error", err)
	}

	// Back up: checks work again.
	is.setFailing(false, false)
	advance(2 * time.Second)
	if err := feed.Check(ctx, c2); err != nil {
		t.Fatalf("feed back: err = %v", err)
	}
}

func TestErrorBodyIsJSON(t *testing.T) {
	w := httptest.NewRecorder()
	(&Error{Status: 401, Code: "invalid_token", Reason: "expired", Description: `say "hi"`}).WriteHTTP(w)
	body, _ := io.ReadAll(w.Body)
	var v map[string]string
	if err := json.Unmarshal(body, &v); err != nil || v["error_description"] != `say "hi"` {
		t.Fatalf("body %s: %v", body, err)
	}
	if got := w.Header().Get("WWW-Authenticate"); strings.Count(got, `"`) != 6 {
		t.Fatalf("WWW-Authenticate %q has unbalanced quotes", got)
	}
}

// TestRefusalRequestID: a refusal carries the resource server's request id in its body and in
// X-Request-Id, and OnDeny sees it, wherever the id comes from: Config.RequestID, the server's
// own middleware (a response header set before Middleware runs), or a proxy in front (a plain
// request header). An id unfit to repeat is not repeated.
func TestRefusalRequestID(t *testing.T) {
	is := newTestIssuer(t)
	type ctxKey struct{}
	tests := map[string]struct {
		fromConfig bool   // Config.RequestID reads the id from the context
		middleware string // the server's middleware sets this response X-Request-Id first
		header     string // the request's X-Request-Id
		want       string
	}{
		"Config.RequestID":                 {fromConfig: true, middleware: "mw-1", header: "hdr-1", want: "ctx-1"},
		"the server's middleware":          {middleware: "mw-2", header: "hdr-2", want: "mw-2"},
		"the request's header":             {header: "3f2b1c9e-7a4d-4e8f-9b1a-2c3d4e5f6a7b", want: "3f2b1c9e-7a4d-4e8f-9b1a-2c3d4e5f6a7b"},
		"a request header unfit to repeat": {header: "a b<script>", want: ""},
		"an overlong request header":       {header: strings.Repeat("a", 129), want: ""},
		"no id anywhere":                   {want: ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var denied *Error
			cfg := Config{Issuer: is.url, Audience: testAudience, OnDeny: func(r *http.Request, e *Error) { denied = e }}
			if tt.fromConfig {
				cfg.RequestID = func(r *http.Request) string { s, _ := r.Context().Value(ctxKey{}).(string); return s }
			}
			v, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.middleware != "" {
					w.Header().Set("X-Request-Id", tt.middleware)
				}
				r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, "ctx-1"))
				v.Middleware(http.NotFoundHandler()).ServeHTTP(w, r)
			}))
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+"/data", nil)
			req.Header.Set("Authorization", "Bearer x")
			if tt.header != "" {
				req.Header.Set("X-Request-Id", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 401 || body["error"] != CodeInvalidToken {
				t.Fatalf("got %d %v, want a 401 invalid_token", resp.StatusCode, body)
			}
			if body["request_id"] != tt.want || denied == nil || denied.RequestID != tt.want {
				t.Errorf("request id: body %q, OnDeny %+v; want %q", body["request_id"], denied, tt.want)
			}
			// The header names what the body names (the server's middleware set it so already).
			wantHeader := tt.want
			if tt.middleware != "" {
				wantHeader = tt.middleware
			}
			if got := resp.Header.Get("X-Request-Id"); got != wantHeader {
				t.Errorf("X-Request-Id = %q, want %q", got, wantHeader)
			}
		})
	}
}
