package server_test

import (
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/verify"
)

const (
	tokenTypeJWT    = "urn:ietf:params:oauth:token-type:jwt"
	tokenTypeAccess = "urn:ietf:params:oauth:token-type:access_token"
	grantExchange   = "urn:ietf:params:oauth:grant-type:token-exchange"
)

// adminJSON sends a management API request as the bootstrap admin.
func (ts *testServer) adminJSON(t testing.TB, method, path string, body any) (*http.Response, map[string]any) {
	t.Helper()
	return ts.bearerJSON(t, ts.Admin, method, path, body)
}

// bearerJSON sends a management API request with an API token.
func (ts *testServer) bearerJSON(t testing.TB, apiToken, method, path string, body any) (*http.Response, map[string]any) {
	t.Helper()
	var r *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	} else {
		r = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, ts.URL+path, r)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	req.Header.Set("Content-Type", "application/json")
	return ts.do(t, req)
}

// grant creates a grant as the admin and returns its id.
func (ts *testServer) grant(t testing.TB, body map[string]any) string {
	t.Helper()
	resp, out := ts.adminJSON(t, "POST", "/v1/grants", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create grant: %d %v", resp.StatusCode, out)
	}
	return out["grant_id"].(string)
}

// agentGET calls an agent-authenticated mandate route with a self token bound to the agent key.
func (ts *testServer) agentCall(t testing.TB, a *testAgent, method, path string, body any) (*http.Response, map[string]any) {
	t.Helper()
	tok := ts.token(t, a, a.Key, nil)
	var r *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	} else {
		r = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, ts.URL+path, r)
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", ts.proof(t, a.Key, method, ts.URL+path, tok))
	req.Header.Set("Content-Type", "application/json")
	return ts.do(t, req)
}

// grantToken fetches the agent's grant token for grant id.
func (ts *testServer) grantToken(t testing.TB, a *testAgent, id string) string {
	t.Helper()
	resp, out := ts.agentCall(t, a, "GET", "/v1/agent/grants", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("agent grants: %d %v", resp.StatusCode, out)
	}
	for _, g := range out["grants"].([]any) {
		g := g.(map[string]any)
		if g["grant_id"] == id {
			return g["grant_token"].(string)
		}
	}
	t.Fatalf("grant %s not among the agent's grants: %v", id, out)
	return ""
}

// actorToken is the next holder's self-signed JWT naming its key.
func (ts *testServer) actorToken(t testing.TB, key ed25519.PrivateKey, did string, edit map[string]any) string {
	now := ts.Clock.Now()
	claims := map[string]any{"iss": did, "aud": ts.URL, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": randomID()}
	for k, v := range edit {
		if v == nil {
			delete(claims, k)
		} else {
			claims[k] = v
		}
	}
	return signJWS(t, key, did, "JWT", claims)
}

// exchange posts a token exchange with a DPoP proof by proofKey; form holds everything else.
func (ts *testServer) exchange(t testing.TB, proofKey crypto.Signer, form url.Values) (*http.Response, map[string]any) {
	t.Helper()
	form.Set("grant_type", grantExchange)
	for try := 0; try < 2; try++ {
		resp, out := ts.tokenRequest(t, form, ts.proof(t, proofKey, "POST", ts.URL+"/oauth/token", ""))
		if out["error"] != "use_dpop_nonce" {
			return resp, out
		}
	}
	t.Fatal("exchange: nonce retry failed")
	return nil, nil
}

// resourceServer is a separate protected resource on its own listener that verifies tokens
// against the server's JWKS and follows its revocation feed, as a third party would.
type resourceServer struct {
	URL  string
	srv  *httptest.Server
	deny []string
}

func newResourceServer(t testing.TB, ts *testServer) *resourceServer {
	rs := &resourceServer{}
	mux := http.NewServeMux()
	rs.srv = httptest.NewServer(mux)
	t.Cleanup(rs.srv.Close)
	rs.URL = rs.srv.URL + "/"
	v, err := verify.New(verify.Config{Issuer: ts.URL, Audience: rs.URL, BaseURL: rs.srv.URL, Now: ts.Clock.Now,
		Status: verify.RevocationFeed(ts.URL+"/v1/revocations", ts.HC, 200*time.Millisecond, verify.WithNow(ts.Clock.Now)),
		OnDeny: func(r *http.Request, e *verify.Error) { rs.deny = append(rs.deny, e.Reason) }})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("GET /data", v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := verify.CallerFrom(r.Context())
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c)
	})))
	return rs
}

// call calls the resource with tok and a proof by key.
func (rs *resourceServer) call(t testing.TB, ts *testServer, key crypto.Signer, tok string) (*http.Response, map[string]any) {
	t.Helper()
	u := rs.srv.URL + "/data"
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "DPoP "+tok)
	p, err := dpop.NewProof(key, "GET", u, dpop.ProofOptions{AccessToken: tok, Now: ts.Clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("DPoP", p)
	return ts.do(t, req)
}
