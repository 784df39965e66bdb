package server_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// clock is the test's time, shared by server and clients so expiry can be tested without sleeping.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// testServer is a real mandate on a real 127.0.0.1 listener.
type testServer struct {
	URL     string
	Addr    string // where it listens (a replica may name another issuer URL)
	DataDir string
	Admin   string // the bootstrap admin's API token
	Srv     *server.Server
	Clock   *clock
	HC      *http.Client
	nonce   string
	nonceM  sync.Mutex
}

func newTestServer(t testing.TB, edit ...func(*config.Config)) *testServer {
	t.Helper()
	clk := &clock{}
	s := servertest.Start(t, servertest.Options{Now: clk.Now, Config: func(c *config.Config) {
		for _, e := range edit {
			e(c)
		}
	}})
	return &testServer{URL: s.URL, Addr: s.Addr, DataDir: s.DataDir, Admin: s.AdminToken, Srv: s.Srv, Clock: clk, HC: &http.Client{Timeout: 10 * time.Second}}
}

// testAgent is an agent's key and, once registered, its id.
type testAgent struct {
	Key    ed25519.PrivateKey
	DID    string
	ID     string
	Handle string
	Code   string
}

func newKey(t testing.TB) (ed25519.PrivateKey, string) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	did, err := didkey.Format(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return k, did
}

// signJWS signs claims with key as a compact JWS with the given header fields.
func signJWS(t testing.TB, key crypto.Signer, kid, typ string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader("kid", kid)
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (ts *testServer) registration(t testing.TB, a *testAgent, jti string) string {
	now := ts.Clock.Now()
	return signJWS(t, a.Key, a.DID, "mandate-registration+jwt", map[string]any{
		"iss": a.DID, "aud": ts.URL, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
		"jti": jti, "handle": a.Handle, "name": "Test agent " + a.Handle, "description": "made by a test",
	})
}

// do sends a request and decodes a JSON response body into a map.
func (ts *testServer) do(t testing.TB, req *http.Request) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := ts.HC.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := map[string]any{}
	raw, _ := io.ReadAll(resp.Body)
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &body)
	}
	return resp, body
}

func (ts *testServer) register(t testing.TB, a *testAgent, jws string) (*http.Response, map[string]any) {
	req, _ := http.NewRequest("POST", ts.URL+"/v1/agents", strings.NewReader(jws))
	req.Header.Set("Content-Type", "application/jose")
	return ts.do(t, req)
}

// newAgent registers a fresh agent; claimed unless told otherwise.
func (ts *testServer) newAgent(t testing.TB, handle string, claim bool) *testAgent {
	t.Helper()
	k, did := newKey(t)
	a := &testAgent{Key: k, DID: did, Handle: handle}
	resp, body := ts.register(t, a, ts.registration(t, a, randomID()))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("register: %d %v", resp.StatusCode, body)
	}
	a.ID, a.Code = body["agent_id"].(string), body["claim_code"].(string)
	if claim {
		if resp, body := ts.claim(t, ts.Admin, a.Code); resp.StatusCode != http.StatusOK {
			t.Fatalf("claim: %d %v", resp.StatusCode, body)
		}
	}
	return a
}

func (ts *testServer) claim(t testing.TB, apiToken, code string) (*http.Response, map[string]any) {
	b, _ := json.Marshal(map[string]string{"claim_code": code})
	req, _ := http.NewRequest("POST", ts.URL+"/v1/agents/claim", strings.NewReader(string(b)))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("Content-Type", "application/json")
	return ts.do(t, req)
}

func (ts *testServer) adminPost(t testing.TB, path string) (*http.Response, map[string]any) {
	req, _ := http.NewRequest("POST", ts.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+ts.Admin)
	return ts.do(t, req)
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// assertion is a private_key_jwt client assertion for a.
func (ts *testServer) assertion(t testing.TB, a *testAgent, jti string) string {
	now := ts.Clock.Now()
	return signJWS(t, a.Key, a.DID, "JWT", map[string]any{
		"iss": a.ID, "sub": a.ID, "aud": ts.URL, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": jti,
	})
}

func (ts *testServer) proof(t testing.TB, key crypto.Signer, method, u, accessToken string) string {
	t.Helper()
	ts.nonceM.Lock()
	nonce := ts.nonce
	ts.nonceM.Unlock()
	p, err := dpop.NewProof(key, method, u, dpop.ProofOptions{AccessToken: accessToken, Nonce: nonce, Now: ts.Clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tokenRequest posts form to the token endpoint with the given proof. It keeps the server's
// latest DPoP nonce, as a client does.
func (ts *testServer) tokenRequest(t testing.TB, form url.Values, proof string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.URL+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	resp, body := ts.do(t, req)
	if n := resp.Header.Get("DPoP-Nonce"); n != "" {
		ts.nonceM.Lock()
		ts.nonce = n
		ts.nonceM.Unlock()
	}
	return resp, body
}

func (ts *testServer) ccForm(t testing.TB, a *testAgent, assertion string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {a.ID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	}
}

// token obtains an access token for a bound to dpopKey, fetching a nonce first if needed.
func (ts *testServer) token(t testing.TB, a *testAgent, dpopKey crypto.Signer, extra url.Values) string {
	t.Helper()
	for try := 0; try < 2; try++ {
		form := ts.ccForm(t, a, ts.assertion(t, a, randomID()))
		for k, v := range extra {
			form[k] = v
		}
		resp, body := ts.tokenRequest(t, form, ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode == http.StatusOK {
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("token response Cache-Control = %q, want no-store", resp.Header.Get("Cache-Control"))
			}
			return body["access_token"].(string)
		}
		if body["error"] != "use_dpop_nonce" {
			t.Fatalf("token: %d %v", resp.StatusCode, body)
		}
	}
	t.Fatal("token: nonce retry failed")
	return ""
}

// callResource calls the protected whoami resource with the given Authorization and DPoP headers.
func (ts *testServer) callResource(t testing.TB, authorization, proof string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.URL+"/v1/agent/whoami", nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	return ts.do(t, req)
}

// denials counts the denial events recorded with reason.
func (ts *testServer) denials(t testing.TB, reason string) int {
	t.Helper()
	evs, err := ts.Srv.Store().ListEvents(context.Background(), audit.Filter{Outcome: audit.OutcomeDenied, Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Reason == reason {
			n++
		}
	}
	return n
}

// auditFilter selects events by action.
func auditFilter(action string) audit.Filter { return audit.Filter{Action: action, Limit: 1000} }
