package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
)

// clock is a settable time shared by the client and the fake server.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeServer is a mandate server for agents: metadata, registration, key rotation, and a token
// endpoint that checks the client assertion and the DPoP proof with the real dpop.Checker.
type fakeServer struct {
	t     *testing.T
	srv   *httptest.Server
	url   string
	clock *clock

	agentID string
	mu      sync.Mutex
	did     string // the agent's registered key
	jtis    map[string]bool

	nonces      *dpop.Nonces // non-nil: proofs need a nonce
	alwaysNonce bool         // refuse every proof with use_dpop_nonce
	expiresIn   int

	checker    *dpop.Checker
	tokenHits  atomic.Int32
	tokenCount atomic.Int32

	mux      *http.ServeMux
	exchange http.HandlerFunc // token exchange requests, when set (task_test.go)
}

func newFakeServer(t *testing.T, did string, clk *clock) *fakeServer {
	t.Helper()
	fs := &fakeServer{t: t, clock: clk, agentID: "agt_test1", did: did, jtis: map[string]bool{}, expiresIn: 300}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{
			"issuer":                                fs.url,
			"token_endpoint":                        fs.url + "/oauth/token",
			"jwks_uri":                              fs.url + "/oauth/jwks",
			"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		})
	})
	mux.HandleFunc("POST /oauth/token", fs.token)
	mux.HandleFunc("POST /v1/agents", fs.register)
	mux.HandleFunc("POST /v1/agents/{id}/keys", fs.rotate)
	fs.mux = mux
	fs.srv = httptest.NewServer(mux)
	fs.url = fs.srv.URL
	t.Cleanup(fs.srv.Close)
	return fs
}

func (fs *fakeServer) checkerFor() *dpop.Checker {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.checker == nil {
		fs.checker = dpop.NewChecker(dpop.Config{Replay: dpop.NewMemoryReplayStore(), Nonces: fs.nonces, Now: fs.clock.Now})
	}
	return fs.checker
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc, "request_id": "req_123"})
}

// verifyJWS checks a compact JWS signed by the did:key in its kid and returns the kid and claims.
func verifyJWS(compact, typ string) (string, map[string]any, error) {
	jws, err := jose.ParseSignedCompact(compact, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		return "", nil, err
	}
	h := jws.Signatures[0].Protected
	if got, _ := h.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return "", nil, fmt.Errorf("typ %q, want %q", got, typ)
	}
	pub, err := didkey.Parse(h.KeyID)
	if err != nil {
		return "", nil, err
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return "", nil, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", nil, err
	}
	return h.KeyID, claims, nil
}

func (fs *fakeServer) token(w http.ResponseWriter, r *http.Request) {
	fs.tokenHits.Add(1)
	if err := r.ParseForm(); err != nil {
		oauthError(w, 400, "invalid_request", err.Error())
		return
	}
	if fs.exchange != nil && r.PostForm.Get("grant_type") == grantTypeTokenExchange {
		fs.exchange(w, r)
		return
	}
	want := map[string]string{
		"grant_type":            "client_credentials",
		"client_id":             fs.agentID,
		"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
	}
	for k, v := range want {
		if got := r.PostForm.Get(k); got != v {
			oauthError(w, 400, "invalid_request", fmt.Sprintf("%s = %q, want %q", k, got, v))
			return
		}
	}
	kid, claims, err := verifyJWS(r.PostForm.Get("client_assertion"), "JWT")
	fs.mu.Lock()
	did := fs.did
	fs.mu.Unlock()
	if err != nil || kid != did {
		oauthError(w, 401, "invalid_client", fmt.Sprintf("assertion: kid %q: %v", kid, err))
		return
	}
	now := fs.clock.Now().Unix()
	iat, exp := int64(claims["iat"].(float64)), int64(claims["exp"].(float64))
	jti, _ := claims["jti"].(string)
	switch {
	case claims["iss"] != fs.agentID || claims["sub"] != fs.agentID:
		oauthError(w, 401, "invalid_client", "iss/sub")
		return
	case claims["aud"] != fs.url:
		oauthError(w, 401, "invalid_client", "aud")
		return
	case exp-iat != 60 || iat > now+5 || exp < now:
		oauthError(w, 401, "invalid_client", "iat/exp")
		return
	case jti == "":
		oauthError(w, 401, "invalid_client", "jti")
		return
	}
	fs.mu.Lock()
	seen := fs.jtis[jti]
	fs.jtis[jti] = true
	fs.mu.Unlock()
	if seen {
		oauthError(w, 401, "invalid_client", "assertion replayed")
		return
	}

	pub, _ := didkey.Parse(did)
	jkt, _ := dpop.Thumbprint(pub)
	proofs := r.Header.Values("DPoP")
	if len(proofs) != 1 {
		oauthError(w, 400, "invalid_dpop_proof", "one DPoP header")
		return
	}
	if fs.alwaysNonce {
		w.Header().Set("DPoP-Nonce", fmt.Sprintf("n%d", fs.tokenHits.Load()))
		oauthError(w, 400, "use_dpop_nonce", "nonce required")
		return
	}
	if _, err := fs.checkerFor().Check(r.Context(), proofs[0], dpop.Request{Method: r.Method, URL: fs.url + "/oauth/token", JKT: jkt}); err != nil {
		var de *dpop.Error
		if errors.As(err, &de) {
			if de.Code == dpop.CodeUseNonce {
				w.Header().Set("DPoP-Nonce", fs.nonces.Current())
			}
			oauthError(w, 400, de.Code, de.Description)
			return
		}
		oauthError(w, 500, "server_error", err.Error())
		return
	}
	if fs.nonces != nil {
		w.Header().Set("DPoP-Nonce", fs.nonces.Current())
	}
	n := fs.tokenCount.Add(1)
	scope := r.PostForm.Get("scope")
	if res := r.PostForm.Get("resource"); res != "" {
		scope += " resource=" + res
	}
	writeJSON(w, 200, map[string]any{
		"access_token": fmt.Sprintf("at_%d_%s", n, jkt),
		"token_type":   "DPoP",
		"expires_in":   fs.expiresIn,
		"scope":        scope,
	})
}

func (fs *fakeServer) register(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != "application/jose" {
		oauthError(w, 415, "invalid_request", "content type")
		return
	}
	body, _ := io.ReadAll(r.Body)
	kid, claims, err := verifyJWS(string(body), "mandate-registration+jwt")
	if err != nil {
		oauthError(w, 400, "invalid_request", err.Error())
		return
	}
	iat, exp := claims["iat"].(float64), claims["exp"].(float64)
	if claims["iss"] != kid || claims["aud"] != fs.url || exp-iat > 300 || exp <= iat || claims["jti"] == "" {
		oauthError(w, 400, "invalid_request", fmt.Sprintf("claims %v", claims))
		return
	}
	if claims["handle"] == "taken" {
		oauthError(w, 409, "handle_taken", "the handle taken is in use")
		return
	}
	writeJSON(w, 201, map[string]any{
		"agent_id":              fs.agentID,
		"handle":                claims["handle"],
		"did":                   kid,
		"status":                "UNCLAIMED",
		"claim_code":            "ABCD-EFGH",
		"claim_code_expires_at": "2030-01-02T03:04:05Z",
	})
}

func (fs *fakeServer) rotate(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != "application/jose+json" {
		oauthError(w, 415, "invalid_request", "content type")
		return
	}
	body, _ := io.ReadAll(r.Body)
	jws, err := jose.ParseSignedJSON(string(body), []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil || len(jws.Signatures) != 2 {
		oauthError(w, 400, "invalid_request", fmt.Sprintf("want two signatures: %v", err))
		return
	}
	var claims struct {
		Sub, Aud, JTI, NewDID string
		IAT, Exp              int64
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &struct {
		Sub    *string `json:"sub"`
		Aud    *string `json:"aud"`
		JTI    *string `json:"jti"`
		NewDID *string `json:"new_did"`
		IAT    *int64  `json:"iat"`
		Exp    *int64  `json:"exp"`
	}{&claims.Sub, &claims.Aud, &claims.JTI, &claims.NewDID, &claims.IAT, &claims.Exp}); err != nil {
		oauthError(w, 400, "invalid_request", err.Error())
		return
	}
	fs.mu.Lock()
	cur := fs.did
	fs.mu.Unlock()
	if claims.Sub != r.PathValue("id") || claims.Aud != fs.url || claims.Exp-claims.IAT > 300 || claims.JTI == "" {
		oauthError(w, 400, "invalid_request", "claims")
		return
	}
	// Each of the two keys must have signed, with its own DID as kid.
	for _, did := range []string{cur, claims.NewDID} {
		pub, err := didkey.Parse(did)
		if err != nil {
			oauthError(w, 400, "invalid_request", err.Error())
			return
		}
		_, sig, _, err := jws.VerifyMulti(pub)
		if err != nil || sig.Protected.KeyID != did {
			oauthError(w, 401, "invalid_client", fmt.Sprintf("no signature by %s: %v", did, err))
			return
		}
	}
	fs.mu.Lock()
	fs.did = claims.NewDID
	fs.mu.Unlock()
	writeJSON(w, 200, map[string]any{"agent_id": fs.agentID, "did": claims.NewDID, "status": "CLAIMED"})
}

func mustKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSaveLoadKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "keys")
	path := filepath.Join(dir, "agent.jwk")
	ed := mustKey(t)
	if err := SaveKey(path, ed); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode %04o, want 0600", got)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Errorf("key dir mode %04o, want 0700", got)
	}
	got, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !ed.Equal(got) {
		t.Errorf("loaded key differs from the saved one")
	}

	if err := SaveKey(path, mustKey(t)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("overwrite: err = %v, want a refusal", err)
	}
	if again, _ := LoadKey(path); !ed.Equal(again) {
		t.Errorf("refused overwrite changed the file")
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadKey(path)
	if want := "chmod 600 " + path; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("group-readable: err = %v, want it to say %q", err, want)
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPath := filepath.Join(dir, "ec.jwk")
	if err := SaveKey(ecPath, ec); err != nil {
		t.Fatal(err)
	}
	gotEC, err := LoadKey(ecPath)
	if err != nil {
		t.Fatal(err)
	}
	if !ec.Equal(gotEC) {
		t.Errorf("loaded P-256 key differs")
	}

	pubPath := filepath.Join(dir, "pub.jwk")
	pubJSON, _ := json.Marshal(jose.JSONWebKey{Key: ed.Public()})
	if err := os.WriteFile(pubPath, pubJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(pubPath); err == nil {
		t.Errorf("a public key file was accepted")
	}
}

func TestDID(t *testing.T) {
	k := mustKey(t)
	got, err := DID(k)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "did:key:z6Mk") {
		t.Errorf("DID = %q", got)
	}
}

func TestRegister(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	fs := newFakeServer(t, did, newClock())
	reg, err := Register(context.Background(), nil, fs.url, key, RegisterRequest{Handle: "researcher", Name: "Research bot", Description: "reads papers"})
	if err != nil {
		t.Fatal(err)
	}
	want := &Registration{
		AgentID: "agt_test1", Handle: "researcher", DID: did, Status: "UNCLAIMED",
		ClaimCode: "ABCD-EFGH", ClaimCodeExpiresAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	if diff := cmp.Diff(want, reg); diff != "" {
		t.Errorf("registration (-want +got):\n%s", diff)
	}

	_, err = Register(context.Background(), nil, fs.url, key, RegisterRequest{Handle: "taken"})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *Error", err)
	}
	if diff := cmp.Diff(&Error{Status: 409, Code: "handle_taken", Description: "the handle taken is in use", RequestID: "req_123"}, e, cmp.AllowUnexported(Error{})); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}
	if !strings.Contains(e.Error(), "req_123") {
		t.Errorf("Error() = %q does not give the request id", e.Error())
	}
}

func TestRotateKey(t *testing.T) {
	cur := mustKey(t)
	did, _ := DID(cur)
	clk := newClock()
	fs := newFakeServer(t, did, clk)
	next, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := RotateKey(context.Background(), nil, fs.url, fs.agentID, cur, next); err != nil {
		t.Fatal(err)
	}
	nextDID, _ := DID(next)
	fs.mu.Lock()
	got := fs.did
	fs.mu.Unlock()
	if got != nextDID {
		t.Fatalf("server key %s, want %s", got, nextDID)
	}
	// Only the new key gets tokens now.
	ts, err := NewTokenSource(Config{Issuer: fs.url, AgentID: fs.agentID, Key: next, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Token(context.Background()); err != nil {
		t.Fatalf("token with the new key: %v", err)
	}
	old, _ := NewTokenSource(Config{Issuer: fs.url, AgentID: fs.agentID, Key: cur, Now: clk.Now})
	_, err = old.Token(context.Background())
	var e *Error
	if !errors.As(err, &e) || e.Code != "invalid_client" {
		t.Fatalf("token with the old key: err = %v, want invalid_client", err)
	}
	// Rotating to the same key is refused locally.
	if err := RotateKey(context.Background(), nil, fs.url, fs.agentID, next, next); err == nil {
		t.Errorf("rotation to the same key accepted")
	}
}

func newSource(t *testing.T, fs *fakeServer, key ed25519.PrivateKey, mod func(*Config)) *TokenSource {
	t.Helper()
	cfg := Config{Issuer: fs.url, AgentID: fs.agentID, Key: key, Scope: "read write", Resource: "https://rs.example", Now: fs.clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	ts, err := NewTokenSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestTokenSourceCachesAndRefreshesEarly(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	clk := newClock()
	fs := newFakeServer(t, did, clk)
	ts := newSource(t, fs, key, nil)
	ctx := context.Background()

	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Scope != "read write resource=https://rs.example" {
		t.Errorf("scope = %q", tok.Scope)
	}
	if want := clk.Now().Add(300 * time.Second); !tok.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt, want)
	}
	// Concurrent callers within the lifetime share the cached token.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := ts.Token(ctx)
			if err != nil || got.AccessToken != tok.AccessToken {
				t.Errorf("Token = %v, %v; want the cached token", got, err)
			}
		}()
	}
	wg.Wait()
	if got := fs.tokenCount.Load(); got != 1 {
		t.Fatalf("tokens issued: %d, want 1", got)
	}

	// 300s lifetime: refreshed once less than 100s remain.
	clk.Advance(190 * time.Second)
	if got, _ := ts.Token(ctx); got.AccessToken != tok.AccessToken {
		t.Errorf("refreshed with 110s left")
	}
	clk.Advance(15 * time.Second)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := ts.Token(ctx)
			if err != nil || got.AccessToken == tok.AccessToken {
				t.Errorf("Token = %v, %v; want a new token", got, err)
			}
		}()
	}
	wg.Wait()
	if got := fs.tokenCount.Load(); got != 2 {
		t.Fatalf("tokens issued: %d, want 2 (one shared refresh)", got)
	}
}

func TestTokenSourceEarlyRefreshFailureKeepsValidToken(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	clk := newClock()
	fs := newFakeServer(t, did, clk)
	ts := newSource(t, fs, key, func(c *Config) { c.RefreshBefore = 2 * time.Minute })
	tok, err := ts.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fs.srv.Close()
	clk.Advance(4 * time.Minute) // in the refresh window, not expired
	got, err := ts.Token(context.Background())
	if err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("Token = %v, %v; want the still-valid token", got, err)
	}
	clk.Advance(2 * time.Minute) // expired
	if _, err := ts.Token(context.Background()); err == nil {
		t.Fatalf("an expired token was returned")
	}
}

func TestTokenSourceNonce(t *testing.T) {
	t.Run("retry once with the server's nonce, then reuse it", func(t *testing.T) {
		key := mustKey(t)
		did, _ := DID(key)
		clk := newClock()
		fs := newFakeServer(t, did, clk)
		fs.nonces = dpop.NewNonces(bytes.Repeat([]byte{7}, 32), 10*time.Minute, clk.Now)
		ts := newSource(t, fs, key, nil)
		if _, err := ts.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := fs.tokenHits.Load(); got != 2 {
			t.Fatalf("token requests: %d, want 2 (one use_dpop_nonce, one retry)", got)
		}
		clk.Advance(301 * time.Second)
		if _, err := ts.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := fs.tokenHits.Load(); got != 3 {
			t.Fatalf("token requests: %d, want 3 (the kept nonce is used at once)", got)
		}
	})
	t.Run("not twice", func(t *testing.T) {
		key := mustKey(t)
		did, _ := DID(key)
		fs := newFakeServer(t, did, newClock())
		fs.alwaysNonce = true
		ts := newSource(t, fs, key, nil)
		_, err := ts.Token(context.Background())
		var e *Error
		if !errors.As(err, &e) || e.Code != "use_dpop_nonce" {
			t.Fatalf("err = %v, want use_dpop_nonce", err)
		}
		if got := fs.tokenHits.Load(); got != 2 {
			t.Fatalf("token requests: %d, want 2", got)
		}
	})
}

func TestTokenSourceErrors(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	fs := newFakeServer(t, did, newClock())
	ts := newSource(t, fs, key, func(c *Config) { c.AgentID = "agt_other" })
	_, err := ts.Token(context.Background())
	var e *Error
	if !errors.As(err, &e) || e.Status != 400 {
		t.Fatalf("err = %v", err)
	}

	_, err = NewTokenSource(Config{Issuer: "ftp://x", RefreshBefore: -1})
	for _, want := range []string{"Issuer", "AgentID is required", "Key is required", "RefreshBefore"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config error %v does not mention %q", err, want)
		}
	}

	wrong := newSource(t, fs, key, func(c *Config) { c.Issuer = fs.url + "/" })
	if _, err := wrong.Token(context.Background()); err == nil || !strings.Contains(err.Error(), "names issuer") {
		t.Errorf("issuer mismatch: err = %v", err)
	}
}

// resourceServer checks Authorization: DPoP and the proof the way a mandate resource server does.
type resourceServer struct {
	srv     *httptest.Server
	checker *dpop.Checker
	nonces  *dpop.Nonces
	always  bool // challenge every request
	hits    atomic.Int32
	bodies  []string
	mu      sync.Mutex
}

func newResourceServer(t *testing.T, jkt string, nonces *dpop.Nonces) *resourceServer {
	rs := &resourceServer{nonces: nonces}
	rs.checker = dpop.NewChecker(dpop.Config{Replay: dpop.NewMemoryReplayStore(), Nonces: nonces})
	rs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.bodies = append(rs.bodies, string(body))
		rs.mu.Unlock()
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "DPoP ")
		if !ok {
			http.Error(w, "no DPoP token", 401)
			return
		}
		if rs.always {
			w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="nonce", algs="EdDSA Ed25519 ES256"`)
			w.Header().Set("DPoP-Nonce", fmt.Sprintf("n%d", rs.hits.Load()))
			w.WriteHeader(401)
			return
		}
		_, err := rs.checker.Check(r.Context(), r.Header.Get("DPoP"), dpop.Request{
			Method: r.Method, URL: "http://" + r.Host + r.URL.Path, AccessToken: tok, JKT: jkt,
		})
		var de *dpop.Error
		if errors.As(err, &de) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`DPoP error=%q, error_description=%q, algs="EdDSA Ed25519 ES256"`, de.Code, de.Description))
			if de.Code == dpop.CodeUseNonce {
				w.Header().Set("DPoP-Nonce", rs.nonces.Current())
			}
			w.WriteHeader(401)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "ok %s %s", r.Method, body)
	}))
	t.Cleanup(rs.srv.Close)
	return rs
}

func TestTransport(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	jkt, _ := dpop.Thumbprint(key.Public())
	fs := newFakeServer(t, did, newClock())
	ctx := context.Background()

	t.Run("GET and POST with a proof each", func(t *testing.T) {
		rs := newResourceServer(t, jkt, nil)
		hc := &http.Client{Transport: newSource(t, fs, key, func(c *Config) { c.Now = nil }).Transport(nil)}
		for i := 0; i < 3; i++ {
			resp, err := hc.Get(rs.srv.URL + "/data?page=" + fmt.Sprint(i))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("GET: %d %s %s", resp.StatusCode, body, resp.Header.Get("WWW-Authenticate"))
			}
		}
		resp, err := hc.Post(rs.srv.URL+"/data", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok POST hello" {
			t.Fatalf("POST: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("use_dpop_nonce: retried once with the same body", func(t *testing.T) {
		nonces := dpop.NewNonces(bytes.Repeat([]byte{9}, 32), 10*time.Minute, nil)
		rs := newResourceServer(t, jkt, nonces)
		hc := &http.Client{Transport: newSource(t, fs, key, func(c *Config) { c.Now = nil }).Transport(nil)}
		req, _ := http.NewRequestWithContext(ctx, "POST", rs.srv.URL+"/data", strings.NewReader("payload"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok POST payload" {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		if got := rs.hits.Load(); got != 2 {
			t.Fatalf("requests: %d, want 2", got)
		}
		if diff := cmp.Diff([]string{"payload", "payload"}, rs.bodies); diff != "" {
			t.Errorf("bodies (-want +got):\n%s", diff)
		}
		// The nonce is kept for the origin: the next request needs no retry.
		resp, err = hc.Get(rs.srv.URL + "/data")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || rs.hits.Load() != 3 {
			t.Fatalf("status %d after %d requests, want 200 after 3", resp.StatusCode, rs.hits.Load())
		}
	})

	t.Run("use_dpop_nonce: not twice", func(t *testing.T) {
		rs := newResourceServer(t, jkt, nil)
		rs.always = true
		hc := &http.Client{Transport: newSource(t, fs, key, func(c *Config) { c.Now = nil }).Transport(nil)}
		resp, err := hc.Get(rs.srv.URL + "/data")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || rs.hits.Load() != 2 {
			t.Fatalf("status %d after %d requests, want 401 after 2", resp.StatusCode, rs.hits.Load())
		}
	})

	t.Run("use_dpop_nonce: a body that cannot be replayed is not retried", func(t *testing.T) {
		nonces := dpop.NewNonces(bytes.Repeat([]byte{3}, 32), 10*time.Minute, nil)
		rs := newResourceServer(t, jkt, nonces)
		hc := &http.Client{Transport: newSource(t, fs, key, func(c *Config) { c.Now = nil }).Transport(nil)}
		req, _ := http.NewRequestWithContext(ctx, "POST", rs.srv.URL+"/data", io.NopCloser(strings.NewReader("once")))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || rs.hits.Load() != 1 {
			t.Fatalf("status %d after %d requests, want 401 after 1", resp.StatusCode, rs.hits.Load())
		}
		if resp.Header.Get("DPoP-Nonce") == "" {
			t.Errorf("the challenge's nonce was not passed on")
		}
	})
}

func TestOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://Example.com:443/a?b": "https://example.com",
		"http://example.com:80/":      "http://example.com",
		"http://127.0.0.1:8080/x":     "http://127.0.0.1:8080",
		"https://[::1]:8443/":         "https://[::1]:8443",
		"https://[::1]/":              "https://[::1]",
	} {
		u, _ := url.Parse(in)
		if got := originOfURL(u); got != want {
			t.Errorf("origin(%q) = %q, want %q", in, got, want)
		}
	}
}
