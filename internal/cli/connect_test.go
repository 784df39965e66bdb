package cli

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/servertest"
	"github.com/mandate-dev/mandate/internal/vault"
)

// testAS is a small, strict OAuth authorization server for one public-or-confidential client:
// the authorization endpoint redirects with a code only for a valid request with an S256
// challenge; the token endpoint checks the PKCE verifier against it, issues short-lived access
// tokens and rotates the refresh token on every refresh, refusing a used one.
type testAS struct {
	*httptest.Server
	clientID, clientSecret, scope string
	expiresIn                     int

	mu           sync.Mutex
	codes        map[string]*asCode
	deny         bool          // the next authorization is refused (access_denied)
	refreshDelay time.Duration // a refresh takes this long (to have calls pile up behind it)
	accessToken  string        // the current one
	refreshToken string        // the current one
	issued       []string      // every token issued
	refreshes    int           // refresh grants served
	refused      []string      // why token requests were refused
}

type asCode struct {
	challenge, redirectURI string
	used                   bool
}

var verifierRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)

func newTestAS(t *testing.T, clientID, clientSecret, scope string, expiresIn int) *testAS {
	as := &testAS{clientID: clientID, clientSecret: clientSecret, scope: scope, expiresIn: expiresIn, codes: map[string]*asCode{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", as.authorize)
	mux.HandleFunc("POST /token", as.token)
	as.Server = httptest.NewServer(mux)
	t.Cleanup(as.Close)
	return as
}

func (as *testAS) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	switch {
	case q.Get("response_type") != "code":
		http.Error(w, "response_type must be code", http.StatusBadRequest)
		return
	case q.Get("client_id") != as.clientID:
		http.Error(w, "unknown client", http.StatusBadRequest)
		return
	case err != nil || redirect.Scheme != "http" || redirect.Hostname() != "127.0.0.1" || redirect.Path != "/callback" || redirect.RawQuery != "":
		http.Error(w, "redirect_uri must be http://127.0.0.1:PORT/callback", http.StatusBadRequest)
		return
	}
	back := func(v url.Values) {
		v.Set("state", q.Get("state"))
		u := *redirect
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	switch {
	case q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43:
		back(url.Values{"error": {"invalid_request"}, "error_description": {"PKCE with S256 is required"}})
	case q.Get("scope") != as.scope:
		back(url.Values{"error": {"invalid_scope"}})
	case q.Get("state") == "":
		back(url.Values{"error": {"invalid_request"}, "error_description": {"state is required"}})
	case as.deny:
		as.deny = false
		back(url.Values{"error": {"access_denied"}, "error_description": {"The user said no.\r\nReally."}})
	default:
		code := "code-" + randomHex(12)
		as.codes[code] = &asCode{challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri")}
		back(url.Values{"code": {code}})
	}
}

func (as *testAS) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	f := r.PostForm
	refuse := func(status int, code, why string) {
		as.refused = append(as.refused, why)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": why})
	}
	grant := f.Get("grant_type")
	if grant == "refresh_token" {
		as.mu.Lock()
		d := as.refreshDelay
		as.mu.Unlock()
		time.Sleep(d)
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	if f.Get("client_id") != as.clientID || (as.clientSecret != "" && subtle.ConstantTimeCompare([]byte(f.Get("client_secret")), []byte(as.clientSecret)) != 1) {
		refuse(http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	switch grant {
	case "authorization_code":
		c := as.codes[f.Get("code")]
		switch {
		case c == nil || c.used:
			refuse(http.StatusBadRequest, "invalid_grant", "unknown or used code "+f.Get("code"))
			return
		case f.Get("redirect_uri") != c.redirectURI:
			c.used = true
			refuse(http.StatusBadRequest, "invalid_grant", "redirect_uri differs from the authorization request's")
			return
		}
		c.used = true
		v := f.Get("code_verifier")
		sum := sha256.Sum256([]byte(v))
		if !verifierRE.MatchString(v) || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
			refuse(http.StatusBadRequest, "invalid_grant", "PKCE verification failed for verifier "+v)
			return
		}
	case "refresh_token":
		if as.refreshToken == "" || subtle.ConstantTimeCompare([]byte(f.Get("refresh_token")), []byte(as.refreshToken)) != 1 {
			refuse(http.StatusBadRequest, "invalid_grant", "unknown, used or rotated refresh token")
			return
		}
		as.refreshes++
	default:
		refuse(http.StatusBadRequest, "unsupported_grant_type", grant)
		return
	}
	as.accessToken, as.refreshToken = "at-"+randomHex(16), "rt-"+randomHex(16)
	as.issued = append(as.issued, as.accessToken, as.refreshToken)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]any{"access_token": as.accessToken, "token_type": "Bearer",
		"expires_in": as.expiresIn, "refresh_token": as.refreshToken, "scope": as.scope})
}

func (as *testAS) snapshot() (refreshes int, refused, issued []string, current string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.refreshes, slices.Clone(as.refused), slices.Clone(as.issued), as.accessToken
}

// testClock is the server's clock: real time plus an offset the test moves forward, so that
// upstream access tokens expire without sleeping.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

var authURLRE = regexp.MustCompile(`http://127\.0\.0\.1:\d+/authorize\?\S+`)

// startConnect runs mandate upstream connect in the background and returns the authorization
// URL it printed.
func startConnect(t *testing.T, ctx context.Context, args ...string) (string, *syncbuf.Buffer, <-chan error) {
	t.Helper()
	out := &syncbuf.Buffer{}
	root := NewRoot(out, out)
	root.SetArgs(append([]string{"upstream", "connect"}, args...))
	root.SetIn(strings.NewReader(""))
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if u := authURLRE.FindString(out.String()); u != "" {
			return u, out, done
		}
		select {
		case err := <-done:
			t.Fatalf("connect ended before printing the URL: %v\n%s", err, out.String())
		default:
		}
	}
	t.Fatalf("connect printed no authorization URL:\n%s", out.String())
	return "", nil, nil
}

// browse GETs u following redirects, as the browser would: to the authorization server, which
// sends it on to connect's loopback callback.
func browse(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("connect did not return")
		return nil
	}
}

// TestConnect is the acceptance 3: connect signs in with PKCE against a local OAuth
// authorization server and stores the refresh token; the proxy then refreshes an expired access
// token, stores the rotated refresh token, and 20 concurrent calls during a refresh all succeed
// with one refresh.
func TestConnect(t *testing.T) {
	clock := &testClock{}
	s := servertest.Start(t, servertest.Options{Now: clock.Now, Config: func(c *config.Config) {
		c.DPoPWindow = 5 * time.Minute // proofs carry the real time; the server's clock runs ahead
	}})
	confDir := filepath.Join(t.TempDir(), "conf")
	t.Setenv(envConfigDir, confDir)
	t.Setenv(envToken, "")
	t.Setenv(envAgentKey, "")
	ts := &testServer{URL: s.URL, DataDir: s.DataDir, ConfigDir: confDir}

	const expiresIn = 60 // seconds
	clientSecret := "cs-" + randomHex(12)
	as := newTestAS(t, "mandate-test-client", clientSecret, "api.read offline_access", expiresIn)
	var apiCalls, apiRefused atomic.Int64
	upstreamAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiCalls.Add(1)
		_, _, _, current := as.snapshot()
		if current == "" || r.Header.Get("Authorization") != "Bearer "+current {
			apiRefused.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, `{"error":"invalid_token"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"me":"ok"}`)
	}))
	t.Cleanup(upstreamAPI.Close)

	status, body := adminCall(t, s, http.MethodPost, "/v1/upstreams", map[string]any{
		"name": "oauthapi", "base_url": upstreamAPI.URL, "auth": "oauth2-refresh", "allow_private": true,
		"oauth2": map[string]any{"auth_url": as.URL + "/authorize", "token_url": as.URL + "/token",
			"client_id": "mandate-test-client", "scopes": []string{"api.read", "offline_access"}},
		"routes": []map[string]any{{"scope": "api:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
	})
	if status != http.StatusCreated {
		t.Fatalf("POST /v1/upstreams: %d %s", status, body)
	}
	kf, grant := agentWithGrant(t, ts, "oauth-bot", "api:read", "oauthapi") // also logs in as the admin
	secrets := func() []string {
		t.Helper()
		var u api.UpstreamJSON
		decodeJSON(t, ok(t, "upstream", "show", "oauthapi", "--json"), &u)
		return u.HasSecrets
	}
	csFile := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(csFile, []byte(clientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	connectArgs := []string{"oauthapi", "--no-browser", "--client-secret-file", csFile}

	t.Run("refused before the browser", func(t *testing.T) {
		addUpstream(t, s, "plainapi", upstreamAPI.URL, "plain:read", "GET", "/x", "k-"+randomHex(8))
		fails(t, "", []string{"upstream", "connect", "plainapi", "--no-browser"}, "connect is for oauth2-refresh upstreams")
		fails(t, "", []string{"upstream", "connect", "nope", "--no-browser"}, "no upstream \"nope\"")
		fails(t, "", []string{"upstream", "connect", "oauthapi", "--no-browser", "--listen", "0.0.0.0:0"}, "loopback IP only")
		fails(t, "", []string{"upstream", "connect", "oauthapi", "--no-browser", "--listen", "localhost:0"}, "loopback IP only")
	})

	t.Run("a wrong state is refused", func(t *testing.T) {
		authURL, out, done := startConnect(t, ctx, connectArgs...)
		q, _ := url.Parse(authURL)
		redirect := q.Query().Get("redirect_uri")
		code, page := browse(t, redirect+"?code=forged&state=not-the-state")
		if code != http.StatusBadRequest || page != closePage {
			t.Errorf("forged callback: %d %q, want 400 and only %q", code, page, closePage)
		}
		err := waitDone(t, done)
		if err == nil || !strings.Contains(err.Error(), "state is not the one this sign-in sent") {
			t.Fatalf("connect = %v, want a state error\n%s", err, out.String())
		}
		if slices.Contains(secrets(), "refresh_token") {
			t.Error("a refresh token was stored")
		}
	})

	t.Run("the user says no", func(t *testing.T) {
		as.mu.Lock()
		as.deny = true
		as.mu.Unlock()
		authURL, _, done := startConnect(t, ctx, connectArgs...)
		if code, page := browse(t, authURL); code != http.StatusBadRequest || page != closePage {
			t.Errorf("refused callback: %d %q", code, page)
		}
		err := waitDone(t, done)
		if err == nil || !strings.Contains(err.Error(), "refused: access_denied: The user said no.Really.") {
			t.Fatalf("connect = %v, want the server's refusal without its control characters", err)
		}
	})

	t.Run("PKCE is verified", func(t *testing.T) {
		// The authorization server itself: a wrong or missing verifier is refused, and so is a
		// request without S256.
		p, _ := newPKCE()
		other, _ := newPKCE()
		redirect := "http://127.0.0.1:1/callback"
		getCode := func(method string) url.Values {
			t.Helper()
			u, _ := authorizationURL(&vault.OAuth2{AuthURL: as.URL + "/authorize", ClientID: as.clientID,
				Scopes: strings.Fields(as.scope)}, redirect, p)
			u = strings.Replace(u, "code_challenge_method=S256", "code_challenge_method="+method, 1)
			resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(u)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			loc, _ := url.Parse(resp.Header.Get("Location"))
			return loc.Query()
		}
		if q := getCode("plain"); q.Get("error") != "invalid_request" {
			t.Errorf("an authorization request with code_challenge_method=plain: %v, want invalid_request", q)
		}
		for _, verifier := range []string{other.verifier, "", p.verifier[:42]} {
			code := getCode("S256").Get("code")
			resp, err := http.PostForm(as.URL+"/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
				"redirect_uri": {redirect}, "client_id": {as.clientID}, "client_secret": {clientSecret}, "code_verifier": {verifier}})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "invalid_grant") {
				t.Errorf("code exchange with verifier %q: %d %s, want invalid_grant", verifier, resp.StatusCode, b)
			}
		}

		// Through connect: the browser arrives with another challenge than connect's, so connect's
		// verifier does not match it; the exchange fails and nothing is stored.
		authURL, out, done := startConnect(t, ctx, connectArgs...)
		u, _ := url.Parse(authURL)
		q := u.Query()
		q.Set("code_challenge", other.challenge)
		u.RawQuery = q.Encode()
		if code, page := browse(t, u.String()); code != http.StatusOK || page != closePage {
			t.Errorf("callback: %d %q", code, page)
		}
		err := waitDone(t, done)
		if err == nil || !strings.Contains(err.Error(), "the token endpoint refused the code exchange: HTTP 400 invalid_grant: PKCE verification failed for verifier [redacted]") {
			t.Fatalf("connect = %v, want the PKCE failure with the verifier redacted\n%s", err, out.String())
		}
		if slices.Contains(secrets(), "refresh_token") {
			t.Error("a refresh token was stored after a failed exchange")
		}
	})

	t.Run("interrupted or timed out", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		_, _, done := startConnect(t, cctx, connectArgs...)
		cancel()
		if err := waitDone(t, done); err == nil || !strings.Contains(err.Error(), "interrupted before the browser came back") {
			t.Errorf("connect after Ctrl-C = %v", err)
		}
		connectWait = 100 * time.Millisecond
		defer func() { connectWait = 5 * time.Minute }()
		fails(t, "", append([]string{"upstream", "connect"}, connectArgs...), "no redirect came back within")
	})

	// The sign-in, as a user does it: a browser that cannot be opened is no failure; the
	// printed URL is opened by hand.
	openBrowser = func(string) error { return errors.New("no browser here") }
	t.Cleanup(func() { openBrowser = defaultOpenBrowser })
	authURL, out, done := startConnect(t, ctx, "oauthapi", "--client-secret-file", csFile)
	for _, want := range []string{"response_type=code", "client_id=mandate-test-client", "code_challenge_method=S256",
		"scope=api.read+offline_access", "redirect_uri=http%3A%2F%2F127.0.0.1%3A"} {
		if !strings.Contains(authURL, want) {
			t.Errorf("authorization URL %s lacks %s", authURL, want)
		}
	}
	if code, page := browse(t, authURL); code != http.StatusOK || page != closePage {
		t.Errorf("the loopback page: %d %q, want 200 and only %q", code, page, closePage)
	}
	if err := waitDone(t, done); err != nil {
		t.Fatalf("connect: %v\n%s", err, out.String())
	}
	hasAll(t, out.String(), "Could not open a browser (no browser here): open the URL yourself.",
		"Connected oauthapi; the refresh token is in the vault.\n", "Stored its client secret too.\n")
	if has := secrets(); !slices.Contains(has, "refresh_token") || !slices.Contains(has, "client_secret") {
		t.Fatalf("after connect the upstream has secrets %v", has)
	}
	refreshes, _, issued, _ := as.snapshot()
	if refreshes != 0 || len(issued) != 2 {
		t.Fatalf("after connect: %d refreshes, %d tokens issued; want the code exchange only", refreshes, len(issued))
	}
	// A confidential client's secret is needed from now on: the vault never gives it back.
	fails(t, "", []string{"upstream", "connect", "oauthapi", "--no-browser"}, "pass it with --client-secret-file")

	// The proxy: a task of the agent calls through it.
	taskFile := filepath.Join(t.TempDir(), "task.json")
	ok(t, "task", "start", "--key-file", kf, "--grant", grant, "--purpose", "oauth upstream", "--instance-key", "--out", taskFile)
	task, _, err := loadTaskFile(taskFile)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: task.Transport(nil), Timeout: 60 * time.Second}
	call := func() error {
		resp, err := hc.Get(s.URL + "/proxy/oauthapi/v1/me")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(b) != `{"me":"ok"}` {
			return fmt.Errorf("GET /proxy/oauthapi/v1/me: %d %s", resp.StatusCode, b)
		}
		return nil
	}
	// The first call: the API takes no access token, so the vault has none and refreshes.
	if err := call(); err != nil {
		t.Fatal(err)
	}
	if refreshes, refused, _, _ := as.snapshot(); refreshes != 1 {
		t.Fatalf("first call: %d refreshes (refused %q), want 1", refreshes, refused)
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	if refreshes, _, _, _ := as.snapshot(); refreshes != 1 {
		t.Fatalf("a call with a fresh access token refreshed: %d refreshes", refreshes)
	}

	// The access token expires; 20 calls at once while the (slow) refresh runs.
	clock.advance(expiresIn*time.Second + time.Second)
	as.mu.Lock()
	as.refreshDelay = 300 * time.Millisecond
	as.mu.Unlock()
	start := make(chan struct{})
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			<-start
			errs <- call()
		}()
	}
	close(start)
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if refreshes, refused, _, _ := as.snapshot(); refreshes != 2 {
		t.Fatalf("20 concurrent calls after expiry: %d refreshes in all (refused %q), want exactly one more (2)", refreshes, refused)
	}

	// Expired again: the refresh succeeds only with the rotated refresh token, which the
	// authorization server issued at the last refresh and refuses to take twice.
	clock.advance(expiresIn*time.Second + time.Second)
	if err := call(); err != nil {
		t.Fatal(err)
	}
	refreshes, refused, issued, _ := as.snapshot()
	if refreshes != 3 {
		t.Errorf("after the second expiry: %d refreshes (refused %q), want 3", refreshes, refused)
	}
	if n := apiRefused.Load(); n != 0 {
		t.Errorf("the API refused %d of %d calls: a stale access token was sent", n, apiCalls.Load())
	}
	// Only the PKCE probes above were refused; no refresh token was ever reused.
	for _, why := range refused {
		if !strings.HasPrefix(why, "PKCE verification failed") {
			t.Errorf("the authorization server refused a token request: %s", why)
		}
	}

	// No token reached connect's output or the CLI's config directory.
	var files strings.Builder
	filepath.WalkDir(confDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(path)
			files.Write(b)
		}
		return nil
	})
	for _, tok := range append(issued, clientSecret) {
		if strings.Contains(out.String(), tok) || strings.Contains(files.String(), tok) {
			t.Errorf("a token or the client secret (%.6s…) is in connect's output or the config directory", tok)
		}
	}
}
