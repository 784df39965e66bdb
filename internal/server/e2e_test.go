package server_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// TestEndToEnd walks the whole path an agent takes: key → register → claim → client_credentials
// with private_key_jwt + DPoP → a resource protected by the verify SDK. Then every way of
// misusing a token or a proof is refused with the right status and code, and leaves a denial
// event in the audit trail.
func TestEndToEnd(t *testing.T) {
	ts := newTestServer(t)
	agent := ts.newAgent(t, "e2e-agent", true)
	dpopKey, _ := newKey(t)
	tok := ts.token(t, agent, dpopKey, nil)
	whoami := ts.URL + "/v1/agent/whoami"

	resp, body := ts.callResource(t, "DPoP "+tok, ts.proof(t, dpopKey, "GET", whoami, tok))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami: %d %v", resp.StatusCode, body)
	}
	jkt, _ := dpop.Thumbprint(dpopKey.Public())
	for k, want := range map[string]string{"agent_id": agent.ID, "sub": agent.ID, "client_id": agent.ID, "handle": "e2e-agent", "did": agent.DID, "jkt": jkt} {
		if body[k] != want {
			t.Errorf("whoami %s = %v, want %v", k, body[k], want)
		}
	}

	otherKey, _ := newKey(t)
	replayed := ts.proof(t, dpopKey, "GET", whoami, tok)
	if resp, body := ts.callResource(t, "DPoP "+tok, replayed); resp.StatusCode != http.StatusOK {
		t.Fatalf("first use of proof: %d %v", resp.StatusCode, body)
	}
	_, ecKey := mustEC(t)

	at := func(d time.Duration) dpop.ProofOptions {
		return dpop.ProofOptions{AccessToken: tok, Now: ts.Clock.Now().Add(d)}
	}
	proofWith := func(method, u string, opts dpop.ProofOptions) string {
		p, err := dpop.NewProof(dpopKey, method, u, opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	hdr, payload := splitJWS(t, ts.proof(t, dpopKey, "GET", whoami, tok))

	tests := map[string]struct {
		auth, proof  string
		status       int
		code, reason string
	}{
		"no proof":               {"DPoP " + tok, "", 401, "invalid_dpop_proof", "missing_proof"},
		"bearer with DPoP token": {"Bearer " + tok, ts.proof(t, dpopKey, "GET", whoami, tok), 401, "invalid_token", "bearer"},
		"replayed proof":         {"DPoP " + tok, replayed, 401, "invalid_dpop_proof", "replay"},
		"wrong htm":              {"DPoP " + tok, proofWith("POST", whoami, at(0)), 401, "invalid_dpop_proof", "htm"},
		"wrong htu":              {"DPoP " + tok, proofWith("GET", ts.URL+"/v1/agent/other", at(0)), 401, "invalid_dpop_proof", "htu"},
		"iat too old":            {"DPoP " + tok, proofWith("GET", whoami, at(-5*time.Minute)), 401, "invalid_dpop_proof", "iat"},
		"iat in future":          {"DPoP " + tok, proofWith("GET", whoami, at(5*time.Minute)), 401, "invalid_dpop_proof", "iat"},
		"proof by another key":   {"DPoP " + tok, ts.proof(t, otherKey, "GET", whoami, tok), 401, "invalid_dpop_proof", "key_mismatch"},
		"proof by a P-256 key":   {"DPoP " + tok, ts.proof(t, ecKey, "GET", whoami, tok), 401, "invalid_dpop_proof", "key_mismatch"},
		"missing ath":            {"DPoP " + tok, proofWith("GET", whoami, dpop.ProofOptions{Now: ts.Clock.Now()}), 401, "invalid_dpop_proof", "ath"},
		"wrong ath":              {"DPoP " + tok, proofWith("GET", whoami, dpop.ProofOptions{AccessToken: tok + "x", Now: ts.Clock.Now()}), 401, "invalid_dpop_proof", "ath"},
		"proof alg none":         {"DPoP " + tok, unsigned(hdr, payload, "none"), 401, "invalid_dpop_proof", "alg"},
		"proof HS256 with public key as secret": {"DPoP " + tok,
			hs256(t, withAlg(t, hdr, "HS256"), payload, dpopKey.Public().(ed25519.PublicKey)), 401, "invalid_dpop_proof", "alg"},
		"private key in proof jwk": {"DPoP " + tok, privateJWKProof(t, dpopKey, whoami, tok, ts.Clock.Now()), 401, "invalid_dpop_proof", "jwk_private"},
		"token alg none":           {"DPoP " + forgeToken(t, tok, "none", nil), ts.proof(t, dpopKey, "GET", whoami, forgeToken(t, tok, "none", nil)), 401, "invalid_token", "alg"},
		"token HS256 with the server's public key as secret": {"DPoP " + forgeToken(t, tok, "HS256", serverPublicKey(t, ts)),
			ts.proof(t, dpopKey, "GET", whoami, forgeToken(t, tok, "HS256", serverPublicKey(t, ts))), 401, "invalid_token", "alg"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			before := ts.denials(t, tt.reason)
			resp, body := ts.callResource(t, tt.auth, tt.proof)
			if resp.StatusCode != tt.status || body["error"] != tt.code {
				t.Fatalf("got %d %v, want %d %s (%s)", resp.StatusCode, body, tt.status, tt.code, tt.reason)
			}
			if ch := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, "DPoP ") || !strings.Contains(ch, `error="`+tt.code+`"`) {
				t.Errorf("WWW-Authenticate = %q, want a DPoP challenge with error=%q", ch, tt.code)
			}
			if strings.Contains(resp.Header.Get("WWW-Authenticate"), tok) || strings.Contains(body["error_description"].(string), tok) {
				t.Error("the refusal echoes the token")
			}
			if got := ts.denials(t, tt.reason); got != before+1 {
				t.Errorf("denial events with reason %q: %d, want %d", tt.reason, got, before+1)
			}
		})
	}
}

// TestTokenLifecycleRefusals covers refusals that need a state change: an expired token, another
// audience, an unknown signing key, a revoked agent, an unclaimed agent, a replayed client
// assertion, and expired or reused claim codes.
func TestTokenLifecycleRefusals(t *testing.T) {
	ts := newTestServer(t)
	dpopKey, _ := newKey(t)
	whoami := ts.URL + "/v1/agent/whoami"
	call := func(t *testing.T, tok string) (*http.Response, map[string]any) {
		return ts.callResource(t, "DPoP "+tok, ts.proof(t, dpopKey, "GET", whoami, tok))
	}
	expectResource := func(t *testing.T, tok string, status int, code, reason string) {
		t.Helper()
		before := ts.denials(t, reason)
		resp, body := call(t, tok)
		if resp.StatusCode != status || body["error"] != code {
			t.Fatalf("got %d %v, want %d %s", resp.StatusCode, body, status, code)
		}
		if ts.denials(t, reason) != before+1 {
			t.Errorf("no denial event with reason %q", reason)
		}
	}

	t.Run("expired token", func(t *testing.T) {
		a := ts.newAgent(t, "expiring", true)
		tok := ts.token(t, a, dpopKey, nil)
		ts.Clock.Advance(6 * time.Minute)
		defer ts.Clock.Advance(-6 * time.Minute)
		expectResource(t, tok, 401, "invalid_token", "expired")
	})
	t.Run("token for another audience", func(t *testing.T) {
		a := ts.newAgent(t, "elsewhere", true)
		tok := ts.token(t, a, dpopKey, url.Values{"resource": {"https://api.example.com"}})
		expectResource(t, tok, 401, "invalid_token", "audience")
	})
	t.Run("unknown kid", func(t *testing.T) {
		a := ts.newAgent(t, "forged", true)
		tok := ts.token(t, a, dpopKey, nil)
		rogue, _ := newKey(t)
		expectResource(t, resign(t, tok, rogue, "rogue-kid"), 401, "invalid_token", "unknown_kid")
	})
	t.Run("revoked agent", func(t *testing.T) {
		a := ts.newAgent(t, "doomed", true)
		tok := ts.token(t, a, dpopKey, nil)
		if resp, body := ts.adminPost(t, "/v1/agents/"+a.ID+"/revoke"); resp.StatusCode != 200 || body["status"] != "REVOKED" {
			t.Fatalf("revoke: %d %v", resp.StatusCode, body)
		}
		expectResource(t, tok, 401, "invalid_token", "revoked")
		before := ts.denials(t, "agent_revoked")
		resp, body := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode != 401 || body["error"] != "invalid_client" {
			t.Fatalf("token for revoked agent: %d %v", resp.StatusCode, body)
		}
		if ts.denials(t, "agent_revoked") != before+1 {
			t.Error("no denial event for the revoked agent's token request")
		}
	})
	t.Run("unclaimed agent", func(t *testing.T) {
		a := ts.newAgent(t, "unclaimed", false)
		before := ts.denials(t, "agent_unclaimed")
		resp, body := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode != 400 || body["error"] != "unauthorized_client" {
			t.Fatalf("token for unclaimed agent: %d %v", resp.StatusCode, body)
		}
		if ts.denials(t, "agent_unclaimed") != before+1 {
			t.Error("no denial event")
		}
	})
	t.Run("replayed client assertion", func(t *testing.T) {
		a := ts.newAgent(t, "replayer", true)
		ts.token(t, a, dpopKey, nil) // makes sure a fresh nonce is held
		assertion := ts.assertion(t, a, randomID())
		resp, body := ts.tokenRequest(t, ts.ccForm(t, a, assertion), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode != 200 {
			t.Fatalf("first use: %d %v", resp.StatusCode, body)
		}
		before := ts.denials(t, "assertion_replay")
		resp, body = ts.tokenRequest(t, ts.ccForm(t, a, assertion), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode != 401 || body["error"] != "invalid_client" {
			t.Fatalf("replayed assertion: %d %v", resp.StatusCode, body)
		}
		if ts.denials(t, "assertion_replay") != before+1 {
			t.Error("no denial event")
		}
	})
	t.Run("reused claim code", func(t *testing.T) {
		a := ts.newAgent(t, "claimed-once", true)
		before := ts.denials(t, "claim_code")
		resp, body := ts.claim(t, ts.Admin, a.Code)
		if resp.StatusCode != 400 || body["error"] != "invalid_request" {
			t.Fatalf("reused code: %d %v", resp.StatusCode, body)
		}
		if ts.denials(t, "claim_code") != before+1 {
			t.Error("no denial event")
		}
	})
	t.Run("expired claim code", func(t *testing.T) {
		a := ts.newAgent(t, "claimed-late", false)
		ts.Clock.Advance(16 * time.Minute)
		defer ts.Clock.Advance(-16 * time.Minute)
		before := ts.denials(t, "claim_code")
		resp, body := ts.claim(t, ts.Admin, a.Code)
		if resp.StatusCode != 400 || body["error"] != "invalid_request" {
			t.Fatalf("expired code: %d %v", resp.StatusCode, body)
		}
		if ts.denials(t, "claim_code") != before+1 {
			t.Error("no denial event")
		}
	})
}

func mustEC(t *testing.T) (*ecdsa.PublicKey, *ecdsa.PrivateKey) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &k.PublicKey, k
}

func splitJWS(t *testing.T, jws string) (map[string]any, string) {
	parts := strings.Split(jws, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	json.Unmarshal(raw, &h)
	return h, parts[1]
}

func encodeHeader(h map[string]any) string {
	b, _ := json.Marshal(h)
	return base64.RawURLEncoding.EncodeToString(b)
}

func withAlg(t *testing.T, h map[string]any, alg string) map[string]any {
	c := map[string]any{}
	for k, v := range h {
		c[k] = v
	}
	c["alg"] = alg
	return c
}

func unsigned(h map[string]any, payload, alg string) string {
	h = withAlg(nil, h, alg)
	return encodeHeader(h) + "." + payload + "."
}

// hs256 signs header.payload with HMAC-SHA256 keyed by secret: the algorithm-confusion attack.
func hs256(t *testing.T, h map[string]any, payload string, secret []byte) string {
	in := encodeHeader(h) + "." + payload
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// forgeToken keeps tok's claims and header but signs with alg (none, or HS256 keyed by secret).
func forgeToken(t *testing.T, tok, alg string, secret []byte) string {
	h, payload := splitJWS(t, tok)
	if alg == "none" {
		return unsigned(h, payload, "none")
	}
	return hs256(t, withAlg(t, h, alg), payload, secret)
}

// resign signs tok's payload with a key the server never published.
func resign(t *testing.T, tok string, key ed25519.PrivateKey, kid string) string {
	h, payload := splitJWS(t, tok)
	h["kid"] = kid
	in := encodeHeader(h) + "." + payload
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in)))
}

// serverPublicKey is the raw public key bytes of the server's signing key, as an attacker reads
// them from the JWKS.
func serverPublicKey(t *testing.T, ts *testServer) []byte {
	resp, body := ts.do(t, mustReq(t, "GET", ts.URL+"/oauth/jwks"))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	x := body["keys"].([]any)[0].(map[string]any)["x"].(string)
	b, err := base64.RawURLEncoding.DecodeString(x)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustReq(t *testing.T, method, u string) *http.Request {
	r, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// privateJWKProof is a correctly signed proof whose header jwk also carries the private key.
func privateJWKProof(t *testing.T, key ed25519.PrivateKey, u, tok string, now time.Time) string {
	h, payload := splitJWS(t, mustProof(t, key, u, tok, now))
	jwk := h["jwk"].(map[string]any)
	jwk["d"] = base64.RawURLEncoding.EncodeToString(key.Seed())
	in := encodeHeader(h) + "." + payload
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in)))
}

func mustProof(t *testing.T, key ed25519.PrivateKey, u, tok string, now time.Time) string {
	p, err := dpop.NewProof(key, "GET", u, dpop.ProofOptions{AccessToken: tok, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEndToEndPostgres runs the agent's whole path on PostgreSQL (--database postgres://…):
// register, claim, token, resource call, revocation.
func TestEndToEndPostgres(t *testing.T) {
	dsn := pgtest.URL(t)
	ts := newTestServer(t, func(c *config.Config) { c.Database = dsn })
	if d := ts.Srv.Store().Dialect(); d != "postgres" {
		t.Fatalf("dialect %s, want postgres", d)
	}
	agent := ts.newAgent(t, "pg-agent", true)
	dpopKey, _ := newKey(t)
	tok := ts.token(t, agent, dpopKey, nil)
	whoami := ts.URL + "/v1/agent/whoami"
	if resp, body := ts.callResource(t, "DPoP "+tok, ts.proof(t, dpopKey, "GET", whoami, tok)); resp.StatusCode != 200 || body["agent_id"] != agent.ID {
		t.Fatalf("whoami: %d %v", resp.StatusCode, body)
	}
	ts.adminPost(t, "/v1/agents/"+agent.ID+"/revoke")
	if resp, body := ts.callResource(t, "DPoP "+tok, ts.proof(t, dpopKey, "GET", whoami, tok)); resp.StatusCode != 401 || body["error"] != "invalid_token" {
		t.Fatalf("revoked agent: %d %v", resp.StatusCode, body)
	}
	if err := ts.Srv.Store().VerifyChain(t.Context()); err != nil {
		t.Errorf("audit chain: %v", err)
	}
}
