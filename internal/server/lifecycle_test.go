package server_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// rotation is the two-signature key rotation request: current key and new key sign one payload.
func rotation(t *testing.T, ts *testServer, a *testAgent, newKey *testAgent, jti string) string {
	t.Helper()
	s, err := jose.NewMultiSigner([]jose.SigningKey{
		{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: a.Key, KeyID: a.DID}},
		{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: newKey.Key, KeyID: newKey.DID}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := ts.Clock.Now()
	payload, _ := json.Marshal(map[string]any{"sub": a.ID, "aud": ts.URL, "iat": now.Unix(),
		"exp": now.Add(time.Minute).Unix(), "jti": jti, "new_did": newKey.DID})
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	return jws.FullSerialize()
}

func (ts *testServer) postRotation(t *testing.T, agentID, body string) (*http.Response, map[string]any) {
	req, _ := http.NewRequest("POST", ts.URL+"/v1/agents/"+agentID+"/keys", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/jose+json")
	return ts.do(t, req)
}

// TestAgentKeyRotation: the id and handle stay, the new key works at once, the old key works for
// the grace period and then not, and a rotation request cannot be replayed.
func TestAgentKeyRotation(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "rotator", true)
	k, did := newKey(t)
	next := &testAgent{Key: k, DID: did, ID: a.ID, Handle: a.Handle}
	dpopKey, _ := newKey(t)

	body := rotation(t, ts, a, next, "rot-1")
	resp, out := ts.postRotation(t, a.ID, body)
	if resp.StatusCode != 200 || out["did"] != next.DID || out["agent_id"] != a.ID || out["handle"] != "rotator" {
		t.Fatalf("rotate: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.postRotation(t, a.ID, body); resp.StatusCode != 400 {
		t.Fatalf("replayed rotation: %d %v", resp.StatusCode, out)
	}
	// The old key, still in its grace period, authenticates but cannot rotate the agent away.
	k3, did3 := newKey(t)
	if resp, out := ts.postRotation(t, a.ID, rotation(t, ts, a, &testAgent{Key: k3, DID: did3}, "rot-takeover")); resp.StatusCode != 403 {
		t.Fatalf("rotation signed by a grace-period key: %d %v, want 403", resp.StatusCode, out)
	}
	ts.token(t, next, dpopKey, nil) // new key works
	ts.token(t, a, dpopKey, nil)    // old key works during the grace period

	ts.Clock.Advance(61 * time.Minute)
	defer ts.Clock.Advance(-61 * time.Minute)
	ts.token(t, next, dpopKey, nil)
	resp, out = ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
	if resp.StatusCode != 401 || out["error"] != "invalid_client" {
		t.Fatalf("old key after grace: %d %v", resp.StatusCode, out)
	}

	// A rotation signed by a stranger's key instead of the agent's is refused.
	stranger := ts.newAgent(t, "stranger", true)
	k2, did2 := newKey(t)
	resp, out = ts.postRotation(t, a.ID, rotation(t, ts, stranger, &testAgent{Key: k2, DID: did2}, "rot-2"))
	if resp.StatusCode != 403 {
		t.Fatalf("rotation by another agent's key: %d %v", resp.StatusCode, out)
	}
}

// TestIntrospectionAndRevocation: RFC 7662 answers active for a live token and active:false once
// it is revoked (RFC 7009) or its agent is; callers must authenticate.
func TestIntrospectionAndRevocation(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "introspected", true)
	dpopKey, _ := newKey(t)
	tok := ts.token(t, a, dpopKey, nil)

	introspect := func(auth string, form url.Values) (*http.Response, map[string]any) {
		req, _ := http.NewRequest("POST", ts.URL+"/oauth/introspect", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		return ts.do(t, req)
	}
	if resp, out := introspect("", url.Values{"token": {tok}}); resp.StatusCode != 401 || out["error"] != "invalid_client" {
		t.Fatalf("unauthenticated introspection: %d %v", resp.StatusCode, out)
	}
	resp, out := introspect("Bearer "+ts.Admin, url.Values{"token": {tok}})
	if resp.StatusCode != 200 || out["active"] != true || out["client_id"] != a.ID || out["token_type"] != "DPoP" {
		t.Fatalf("introspect: %d %v", resp.StatusCode, out)
	}
	// The agent itself may introspect with private_key_jwt.
	form := ts.ccForm(t, a, ts.assertion(t, a, randomID()))
	form.Del("grant_type")
	form.Set("token", tok)
	if resp, out := introspect("", form); resp.StatusCode != 200 || out["active"] != true {
		t.Fatalf("introspect as agent: %d %v", resp.StatusCode, out)
	}
	if _, out := introspect("Bearer "+ts.Admin, url.Values{"token": {"garbage"}}); out["active"] != false {
		t.Fatalf("garbage token: %v", out)
	}
	// Another user learns nothing about a token of an agent that is not theirs.
	bob := ts.userToken(t, "bob")
	if resp, out := introspect("Bearer "+bob, url.Values{"token": {tok}}); resp.StatusCode != 200 || out["active"] != false || len(out) != 1 {
		t.Fatalf("introspection by a stranger: %d %v", resp.StatusCode, out)
	}
	if resp, out := introspect("Bearer mnd_wrong", url.Values{"token": {tok}}); resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
		t.Fatalf("bad API token: %d %v %q", resp.StatusCode, out, resp.Header.Get("WWW-Authenticate"))
	}

	// The agent revokes its own token.
	form = ts.ccForm(t, a, ts.assertion(t, a, randomID()))
	form.Del("grant_type")
	form.Set("token", tok)
	req, _ := http.NewRequest("POST", ts.URL+"/oauth/revoke", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, out := ts.do(t, req); resp.StatusCode != 200 {
		t.Fatalf("revoke: %d %v", resp.StatusCode, out)
	}
	if _, out := introspect("Bearer "+ts.Admin, url.Values{"token": {tok}}); out["active"] != false {
		t.Fatalf("revoked token still active: %v", out)
	}
	whoami := ts.URL + "/v1/agent/whoami"
	if resp, out := ts.callResource(t, "DPoP "+tok, ts.proof(t, dpopKey, "GET", whoami, tok)); resp.StatusCode != 401 {
		t.Fatalf("revoked token at the resource: %d %v", resp.StatusCode, out)
	}
	// The revocation feed lists it for offline verifiers.
	resp, out = ts.do(t, mustReq(t, "GET", ts.URL+"/v1/revocations"))
	revs, _ := out["revocations"].([]any)
	if resp.StatusCode != 200 || len(revs) != 1 || revs[0].(map[string]any)["kind"] != "token" {
		t.Fatalf("revocation feed: %d %v", resp.StatusCode, out)
	}
	cursor := out["cursor"].(float64)
	resp, out = ts.do(t, mustReq(t, "GET", ts.URL+"/v1/revocations?after="+strconv.Itoa(int(cursor))))
	if revs, _ := out["revocations"].([]any); resp.StatusCode != 200 || len(revs) != 0 || out["cursor"].(float64) != cursor {
		t.Fatalf("revocation feed after the cursor: %d %v", resp.StatusCode, out)
	}

	// Revoking the agent makes its other tokens inactive too.
	tok2 := ts.token(t, a, dpopKey, nil)
	ts.adminPost(t, "/v1/agents/"+a.ID+"/revoke")
	if _, out := introspect("Bearer "+ts.Admin, url.Values{"token": {tok2}}); out["active"] != false {
		t.Fatalf("token of revoked agent still active: %v", out)
	}
}

// TestMetricsAndDiscovery: metadata lists what clients need, and /metrics counts tokens issued
// and denied by reason.
func TestMetricsAndDiscovery(t *testing.T) {
	ts := newTestServer(t)
	resp, md := ts.do(t, mustReq(t, "GET", ts.URL+"/.well-known/oauth-authorization-server"))
	if resp.StatusCode != 200 || md["issuer"] != ts.URL || md["token_endpoint"] != ts.URL+"/oauth/token" {
		t.Fatalf("metadata: %v", md)
	}
	for _, k := range []string{"dpop_signing_alg_values_supported", "token_endpoint_auth_methods_supported", "token_endpoint_auth_signing_alg_values_supported", "jwks_uri", "introspection_endpoint", "revocation_endpoint"} {
		if md[k] == nil {
			t.Errorf("metadata lacks %s", k)
		}
	}
	a := ts.newAgent(t, "counted", true)
	dpopKey, _ := newKey(t)
	ts.token(t, a, dpopKey, nil)
	ts.tokenRequest(t, url.Values{"grant_type": {"client_credentials"}}, "") // no proof

	res, err := ts.HC.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`mandate_tokens_issued_total{grant_type="client_credentials"} 1`,
		`mandate_tokens_denied_total{grant_type="client_credentials",reason="dpop_missing"} 1`,
		`mandate_http_requests_total{code="200",method="POST",route="POST /oauth/token"}`,
		`mandate_http_request_duration_seconds_bucket`,
	} {
		if !strings.Contains(string(raw), want) {
			t.Log(grepLines(string(raw), "mandate_tokens"))
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/v1/openapi.json"} {
		if resp, _ := ts.do(t, mustReq(t, "GET", ts.URL+path)); resp.StatusCode != 200 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	if err := ts.Srv.Store().VerifyChain(t.Context()); err != nil {
		t.Errorf("audit chain: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFullySpecifiedEd25519: an agent may sign its client assertion and DPoP proof with the
// RFC 9864 alg name "Ed25519" instead of "EdDSA".
func TestFullySpecifiedEd25519(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "fully-specified", true)
	dpopKey, _ := newKey(t)
	ts.token(t, a, dpopKey, nil) // fetch a nonce
	now := ts.Clock.Now()
	assertion := rawSign(a.Key, map[string]any{"alg": "Ed25519", "kid": a.DID, "typ": "JWT"},
		map[string]any{"iss": a.ID, "sub": a.ID, "aud": ts.URL + "/oauth/token", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": randomID()})
	h, payload := splitJWS(t, ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
	h["alg"] = "Ed25519"
	proof := signedWith(dpopKey, h, payload)
	resp, body := ts.tokenRequest(t, ts.ccForm(t, a, assertion), proof)
	if resp.StatusCode != 200 {
		t.Fatalf("token with alg Ed25519: %d %v", resp.StatusCode, body)
	}
}

func rawSign(key ed25519.PrivateKey, header, claims map[string]any) string {
	b, _ := json.Marshal(claims)
	return signedWith(key, header, base64.RawURLEncoding.EncodeToString(b))
}

func signedWith(key ed25519.PrivateKey, header map[string]any, payload string) string {
	in := encodeHeader(header) + "." + payload
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in)))
}

// TestNonceChallenge: a proof without the server's nonce gets use_dpop_nonce and exactly one
// DPoP-Nonce field (a repeated field reads as "n, n" to fetch clients, RFC 9110 §5.3).
func TestNonceChallenge(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "nonce-less", true)
	dpopKey, _ := newKey(t)
	resp, body := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
	if resp.StatusCode != 400 || body["error"] != "use_dpop_nonce" {
		t.Fatalf("proof without nonce: %d %v", resp.StatusCode, body)
	}
	if n := resp.Header.Values("DPoP-Nonce"); len(n) != 1 || n[0] == "" {
		t.Fatalf("DPoP-Nonce fields: %q, want exactly one", n)
	}
}

// userToken creates a user (as the admin) and returns an API token of theirs.
func (ts *testServer) userToken(t *testing.T, name string) string {
	t.Helper()
	post := func(path, body string) map[string]any {
		req, _ := http.NewRequest("POST", ts.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+ts.Admin)
		req.Header.Set("Content-Type", "application/json")
		resp, out := ts.do(t, req)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s: %d %v", path, resp.StatusCode, out)
		}
		return out
	}
	post("/v1/users", `{"name":"`+name+`"}`)
	return post("/v1/tokens", `{"user":"`+name+`"}`)["token"].(string)
}

func TestNonceChallengeNotAudited(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "quiet", true)
	dpopKey, _ := newKey(t)
	ts.token(t, a, dpopKey, nil) // meets the nonce challenge once, then succeeds
	if n := ts.denials(t, "dpop_nonce"); n != 0 {
		t.Fatalf("%d audit denials for the nonce challenge, want 0", n)
	}
}
