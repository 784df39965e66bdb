package vault_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/vault"
)

var (
	admin = principal.User{ID: "usr_admin", Name: "admin", Admin: true}
	alice = principal.User{ID: "usr_alice", Name: "alice"}
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	store *sqlstore.Store
	ring  *keyring
	clk   *clock
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &env{store: st, ring: mustKeyring(t, randomKey(t)), clk: &clock{now: time.Now().UTC()}}
}

func (e *env) service() *vault.Service {
	return vault.New(vault.Config{Store: e.store, Keyring: e.ring.keys, Audit: e.store, Now: e.clk.Now})
}

func wantKind(t *testing.T, what string, err error, kind apperr.Kind) {
	t.Helper()
	ae, ok := apperr.As(err)
	if !ok || ae.Kind != kind {
		t.Errorf("%s: error %v, want an apperr of kind %d", what, err, kind)
	}
}

func route(scope, method, path string) vault.Route {
	return vault.Route{Scope: scope, Methods: []string{method}, Paths: []string{path}}
}

func TestAddUpstreamValidates(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ok := vault.Upstream{Name: "ahrefs", BaseURL: "https://api.ahrefs.com/v3", Auth: vault.AuthBearer,
		Routes: []vault.Route{route("ahrefs:read", "GET", "/site-explorer/*")}}
	oauth := &vault.OAuth2{TokenURL: "https://auth.example/token", ClientID: "cid"}
	tests := map[string]func(u *vault.Upstream){
		"empty name":              func(u *vault.Upstream) { u.Name = "" },
		"upper-case name":         func(u *vault.Upstream) { u.Name = "Ahrefs" },
		"long name":               func(u *vault.Upstream) { u.Name = strings.Repeat("a", 41) },
		"name with slash":         func(u *vault.Upstream) { u.Name = "a/b" },
		"relative base URL":       func(u *vault.Upstream) { u.BaseURL = "/v3" },
		"ftp base URL":            func(u *vault.Upstream) { u.BaseURL = "ftp://api.ahrefs.com" },
		"plain http":              func(u *vault.Upstream) { u.BaseURL = "http://api.ahrefs.com" },
		"query":                   func(u *vault.Upstream) { u.BaseURL = "https://api.ahrefs.com/v3?x=1" },
		"empty query":             func(u *vault.Upstream) { u.BaseURL = "https://api.ahrefs.com/v3?" },
		"fragment":                func(u *vault.Upstream) { u.BaseURL = "https://api.ahrefs.com/v3#x" },
		"user info":               func(u *vault.Upstream) { u.BaseURL = "https://user:pw@api.ahrefs.com/v3" },
		"loopback without flag":   func(u *vault.Upstream) { u.BaseURL = "https://127.0.0.1:8443" },
		"private without flag":    func(u *vault.Upstream) { u.BaseURL = "https://10.1.2.3" },
		"link-local without flag": func(u *vault.Upstream) { u.BaseURL = "https://169.254.169.254" },
		"localhost without flag":  func(u *vault.Upstream) { u.BaseURL = "https://localhost" },
		"IPv6 loopback":           func(u *vault.Upstream) { u.BaseURL = "https://[::1]:8443" },
		"dot-dot in base":         func(u *vault.Upstream) { u.BaseURL = "https://api.ahrefs.com/v3/../admin" },
		"unknown auth":            func(u *vault.Upstream) { u.Auth = "magic" },
		"header without param":    func(u *vault.Upstream) { u.Auth = vault.AuthHeader },
		"header param Host":       func(u *vault.Upstream) { u.Auth, u.Param = vault.AuthHeader, "host" },
		"header param with space": func(u *vault.Upstream) { u.Auth, u.Param = vault.AuthHeader, "X Key" },
		"query without param":     func(u *vault.Upstream) { u.Auth = vault.AuthQuery },
		"query param with &":      func(u *vault.Upstream) { u.Auth, u.Param = vault.AuthQuery, "a&b" },
		"param for bearer":        func(u *vault.Upstream) { u.Param = "X-Key" },
		"oauth2 without settings": func(u *vault.Upstream) { u.Auth = vault.AuthOAuth2Refresh },
		"oauth2 for bearer":       func(u *vault.Upstream) { u.OAuth2 = oauth },
		"oauth2 without client id": func(u *vault.Upstream) {
			u.Auth, u.OAuth2 = vault.AuthOAuth2ClientCredentials, &vault.OAuth2{TokenURL: "https://a/t"}
		},
		"oauth2 http token URL": func(u *vault.Upstream) {
			u.Auth, u.OAuth2 = vault.AuthOAuth2ClientCredentials, &vault.OAuth2{TokenURL: "http://auth.example/t", ClientID: "c"}
		},
		"oauth2 bad scope": func(u *vault.Upstream) {
			u.Auth, u.OAuth2 = vault.AuthOAuth2ClientCredentials, &vault.OAuth2{TokenURL: "https://a/t", ClientID: "c", Scopes: []string{"a b"}}
		},
		"route without scope":     func(u *vault.Upstream) { u.Routes[0].Scope = "" },
		"route scope with space":  func(u *vault.Upstream) { u.Routes[0].Scope = "a b" },
		"route without methods":   func(u *vault.Upstream) { u.Routes[0].Methods = nil },
		"lower-case method":       func(u *vault.Upstream) { u.Routes[0].Methods = []string{"get"} },
		"method with space":       func(u *vault.Upstream) { u.Routes[0].Methods = []string{"GET POST"} },
		"route without paths":     func(u *vault.Upstream) { u.Routes[0].Paths = nil },
		"relative path":           func(u *vault.Upstream) { u.Routes[0].Paths = []string{"v3/*"} },
		"** not last":             func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/**/x"} },
		"partial *":               func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/site-*"} },
		"dot-dot path":            func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/a/../b"} },
		"empty segment":           func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/a//b"} },
		"query in path":           func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/a?x=1"} },
		"escape in path":          func(u *vault.Upstream) { u.Routes[0].Paths = []string{"/a%2fb"} },
		"body rule without field": func(u *vault.Upstream) { u.Routes[0].Body = []vault.BodyRule{{Pointer: "/to", Match: "equals"}} },
		"body rule bad pointer": func(u *vault.Upstream) {
			u.Routes[0].Body = []vault.BodyRule{{Detail: "d", Pointer: "to", Match: "equals"}}
		},
		"body rule bad escape": func(u *vault.Upstream) {
			u.Routes[0].Body = []vault.BodyRule{{Detail: "d", Pointer: "/a~2", Match: "equals"}}
		},
		"body rule bad match": func(u *vault.Upstream) {
			u.Routes[0].Body = []vault.BodyRule{{Detail: "d", Pointer: "/to", Match: "regex"}}
		},
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			u := ok
			u.Routes = []vault.Route{route("ahrefs:read", "GET", "/site-explorer/*")}
			edit(&u)
			_, err := svc.AddUpstream(t.Context(), "req", admin, u)
			wantKind(t, "AddUpstream", err, apperr.Invalid)
		})
	}
	if list, _ := svc.ListUpstreams(t.Context()); len(list) != 0 {
		t.Errorf("refused upstreams were stored: %d", len(list))
	}
}

func TestAddUpstreamNormalizes(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	got, err := svc.AddUpstream(t.Context(), "req", admin, vault.Upstream{Name: "resend", BaseURL: "HTTPS://API.Resend.com/",
		Auth: vault.AuthHeader, Param: "x-api-key",
		Routes: []vault.Route{{Scope: "resend:send", Methods: []string{"POST", "POST"}, Paths: []string{"/emails", "/v1/**"},
			Body: []vault.BodyRule{{Detail: "recipient_domains", Pointer: "/to", Match: "email_domain"}}}}})
	if err != nil {
		t.Fatalf("AddUpstream: %v", err)
	}
	if got.BaseURL != "https://api.resend.com" || got.Param != "X-Api-Key" || len(got.Routes[0].Methods) != 1 {
		t.Errorf("AddUpstream = %+v, want the base URL lower-cased without a trailing slash, the header canonical, methods deduplicated", got)
	}
	stored, err := svc.GetUpstream(t.Context(), "resend")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, stored); diff != "" {
		t.Errorf("stored (-returned +stored):\n%s", diff)
	}
	_, err = svc.AddUpstream(t.Context(), "req", admin, vault.Upstream{Name: "resend", BaseURL: "https://x.example", Auth: vault.AuthBearer})
	wantKind(t, "AddUpstream of an existing name", err, apperr.Conflict)
	// A private upstream on purpose.
	if _, err := svc.AddUpstream(t.Context(), "req", admin, vault.Upstream{Name: "local", BaseURL: "http://127.0.0.1:9999",
		Auth: vault.AuthOAuth2ClientCredentials, AllowPrivate: true,
		OAuth2: &vault.OAuth2{TokenURL: "http://127.0.0.1:9998/token", ClientID: "c"}}); err != nil {
		t.Errorf("AddUpstream(allow_private, http): %v", err)
	}
}

func TestAdminOnly(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ctx := t.Context()
	u := vault.Upstream{Name: "ahrefs", BaseURL: "https://api.ahrefs.com", Auth: vault.AuthBearer}
	if _, err := svc.AddUpstream(ctx, "req", admin, u); err != nil {
		t.Fatal(err)
	}
	_, err := svc.AddUpstream(ctx, "req1", alice, vault.Upstream{Name: "x", BaseURL: "https://x.example", Auth: vault.AuthBearer})
	wantKind(t, "AddUpstream by a user", err, apperr.Forbidden)
	_, err = svc.UpdateRoutes(ctx, "req2", alice, "ahrefs", nil)
	wantKind(t, "UpdateRoutes by a user", err, apperr.Forbidden)
	wantKind(t, "SetSecret by a user", svc.SetSecret(ctx, "req3", alice, "ahrefs", "", []byte("x")), apperr.Forbidden)
	wantKind(t, "RemoveUpstream by a user", svc.RemoveUpstream(ctx, "req4", alice, "ahrefs"), apperr.Forbidden)
	evs, err := e.store.ListEvents(ctx, audit.Filter{Outcome: audit.OutcomeDenied})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("%d denied events, want 4", len(evs))
	}
	for _, ev := range evs {
		if ev.ActorID != alice.ID || ev.Reason != "forbidden" {
			t.Errorf("denied event %+v, want actor alice, reason forbidden", ev)
		}
	}
}

func TestUpdateAndRemove(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ctx := t.Context()
	if _, err := svc.AddUpstream(ctx, "req", admin, vault.Upstream{Name: "ahrefs", BaseURL: "https://api.ahrefs.com", Auth: vault.AuthBearer}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Upstream(ctx, "ahrefs"); err != nil { // cached
		t.Fatal(err)
	}
	routes := []vault.Route{route("ahrefs:read", "GET", "/v3/**")}
	got, err := svc.UpdateRoutes(ctx, "req", admin, "ahrefs", routes)
	if err != nil || len(got.Routes) != 1 {
		t.Fatalf("UpdateRoutes = %+v, %v", got, err)
	}
	if u, err := svc.Upstream(ctx, "ahrefs"); err != nil || len(u.Routes) != 1 {
		t.Errorf("Upstream after UpdateRoutes = %+v, %v: the cache was not dropped", u, err)
	}
	_, err = svc.UpdateRoutes(ctx, "req", admin, "ahrefs", []vault.Route{route("", "GET", "/")})
	wantKind(t, "UpdateRoutes(invalid)", err, apperr.Invalid)
	_, err = svc.UpdateRoutes(ctx, "req", admin, "nope", routes)
	wantKind(t, "UpdateRoutes(unknown)", err, apperr.NotFound)
	if err := svc.SetSecret(ctx, "req", admin, "ahrefs", "", []byte("key")); err != nil {
		t.Fatal(err)
	}
	if err := svc.RemoveUpstream(ctx, "req", admin, "ahrefs"); err != nil {
		t.Fatalf("RemoveUpstream: %v", err)
	}
	_, err = svc.Upstream(ctx, "ahrefs")
	wantKind(t, "Upstream after remove", err, apperr.NotFound)
	wantKind(t, "RemoveUpstream again", svc.RemoveUpstream(ctx, "req", admin, "ahrefs"), apperr.NotFound)
	if _, _, _, err := e.store.GetSecret(ctx, "ahrefs", vault.SecretCredential); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("the secret outlived its upstream: %v", err)
	}
}

func TestInjectStatic(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ctx := t.Context()
	tests := []struct {
		auth   vault.AuthKind
		param  string
		secret string
		url    string
		check  func(r *http.Request) string // returns what carries the credential
		want   string
	}{
		{vault.AuthBearer, "", "sk_bearer", "https://u.example/a", func(r *http.Request) string { return r.Header.Get("Authorization") }, "Bearer sk_bearer"},
		{vault.AuthHeader, "X-Api-Key", "sk_header", "https://u.example/a", func(r *http.Request) string { return r.Header.Get("X-Api-Key") }, "sk_header"},
		{vault.AuthQuery, "api_key", "sk q&=", "https://u.example/a?b=2&api_key=agent&a=1&api%5Fkey=x", func(r *http.Request) string { return r.URL.RawQuery },
			"b=2&a=1&api_key=sk+q%26%3D"},
		{vault.AuthBasic, "", "user:pa:ss", "https://u.example/a", func(r *http.Request) string { return r.Header.Get("Authorization") },
			"Basic " + base64.StdEncoding.EncodeToString([]byte("user:pa:ss"))},
	}
	for i, tc := range tests {
		t.Run(string(tc.auth), func(t *testing.T) {
			name := fmt.Sprintf("up-%d", i)
			u, err := svc.AddUpstream(ctx, "req", admin, vault.Upstream{Name: name, BaseURL: "https://u.example", Auth: tc.auth, Param: tc.param})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("GET", tc.url, nil)
			err = svc.Inject(ctx, u, req)
			wantKind(t, "Inject before a secret is set", err, apperr.Internal)
			if err := svc.SetSecret(ctx, "req", admin, name, "", []byte(tc.secret)); err != nil {
				t.Fatalf("SetSecret: %v", err)
			}
			req = httptest.NewRequest("GET", tc.url, nil)
			req.Header.Set("Authorization", "Bearer agent-token")
			if err := svc.Inject(ctx, u, req); err != nil {
				t.Fatalf("Inject: %v", err)
			}
			if got := tc.check(req); got != tc.want {
				t.Errorf("credential = %q, want %q", got, tc.want)
			}
			// A new secret is used at once on this replica.
			if err := svc.SetSecret(ctx, "req", admin, name, "", []byte(tc.secret+"2")); err != nil {
				t.Fatal(err)
			}
			req = httptest.NewRequest("GET", tc.url, nil)
			if err := svc.Inject(ctx, u, req); err != nil {
				t.Fatal(err)
			}
			if got := tc.check(req); got == tc.want {
				t.Errorf("after SetSecret the old credential is still injected")
			}
		})
	}
}

func TestSetSecretRefuses(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ctx := t.Context()
	for _, u := range []vault.Upstream{
		{Name: "basic", BaseURL: "https://u.example", Auth: vault.AuthBasic},
		{Name: "oauth", BaseURL: "https://u.example", Auth: vault.AuthOAuth2ClientCredentials, OAuth2: &vault.OAuth2{TokenURL: "https://a/t", ClientID: "c"}},
	} {
		if _, err := svc.AddUpstream(ctx, "req", admin, u); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, upstream, kind, secret string
		want                         apperr.Kind
	}{
		{"empty", "basic", "", "", apperr.Invalid},
		{"newline", "basic", "", "user:pw\n", apperr.Invalid},
		{"basic without colon", "basic", "", "userpw", apperr.Invalid},
		{"wrong kind", "basic", vault.SecretRefreshToken, "u:p", apperr.Invalid},
		{"access token", "oauth", vault.SecretAccessToken, "at", apperr.Invalid},
		{"refresh token for client credentials", "oauth", vault.SecretRefreshToken, "rt", apperr.Invalid},
		{"too long", "basic", "", "u:" + strings.Repeat("p", vault.MaxSecretSize), apperr.Invalid},
		{"unknown upstream", "nope", "", "x", apperr.NotFound},
	}
	for _, tc := range tests {
		err := svc.SetSecret(ctx, "req", admin, tc.upstream, tc.kind, []byte(tc.secret))
		wantKind(t, tc.name, err, tc.want)
		if err != nil && tc.secret != "" && strings.Contains(err.Error(), strings.TrimSpace(tc.secret)) {
			t.Errorf("%s: the error quotes the secret: %v", tc.name, err)
		}
	}
}

// tokenServer is an OAuth token endpoint that rotates refresh tokens.
type tokenServer struct {
	*httptest.Server
	mu        sync.Mutex
	calls     int
	valid     map[string]bool // refresh tokens that work
	expiresIn int
	rotate    bool
	hook      func(n int) // called, unlocked, before answering call n
	forms     []map[string][]string
}

func newTokenServer(t *testing.T, refresh string) *tokenServer {
	ts := &tokenServer{valid: map[string]bool{refresh: true}, expiresIn: 3600, rotate: true}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost ||
			r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			http.Error(w, "bad request", 400)
			return
		}
		ts.mu.Lock()
		ts.calls++
		n := ts.calls
		ts.forms = append(ts.forms, r.PostForm)
		hook := ts.hook
		ts.mu.Unlock()
		if hook != nil {
			hook(n)
		}
		ts.mu.Lock()
		defer ts.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("client_id") != "cid" || r.PostForm.Get("client_secret") != "client-secret" {
			w.WriteHeader(401)
			fmt.Fprintf(w, `{"error":"invalid_client","error_description":"bad secret %s"}`, r.PostForm.Get("client_secret"))
			return
		}
		resp := map[string]any{"access_token": fmt.Sprintf("at-%d", n), "token_type": "Bearer", "expires_in": ts.expiresIn}
		switch r.PostForm.Get("grant_type") {
		case "refresh_token":
			rt := r.PostForm.Get("refresh_token")
			if !ts.valid[rt] {
				w.WriteHeader(400)
				fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"refresh token %s is dead"}`, rt)
				return
			}
			if ts.rotate {
				delete(ts.valid, rt)
				next := fmt.Sprintf("rt-%d", n)
				ts.valid[next] = true
				resp["refresh_token"] = next
			}
		case "client_credentials":
		default:
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"unsupported_grant_type"}`)
			return
		}
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tokenServer) callCount() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.calls
}

func addOAuth(t *testing.T, svc *vault.Service, name string, auth vault.AuthKind, tokenURL string, secrets map[string]string) vault.Upstream {
	t.Helper()
	u, err := svc.AddUpstream(t.Context(), "req", admin, vault.Upstream{Name: name, BaseURL: "https://api.example", Auth: auth,
		AllowPrivate: true, OAuth2: &vault.OAuth2{TokenURL: tokenURL, ClientID: "cid", Scopes: []string{"read"}}})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range secrets {
		if err := svc.SetSecret(t.Context(), "req", admin, name, k, []byte(v)); err != nil {
			t.Fatalf("SetSecret(%s): %v", k, err)
		}
	}
	return u
}

func injected(t *testing.T, svc *vault.Service, u vault.Upstream) string {
	t.Helper()
	req := httptest.NewRequest("GET", "https://api.example/x", nil)
	if err := svc.Inject(t.Context(), u, req); err != nil {
		t.Fatalf("Inject: %v", err)
	}
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
}

func TestClientCredentials(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ts := newTokenServer(t, "unused")
	ts.expiresIn = 120
	u := addOAuth(t, svc, "cc", vault.AuthOAuth2ClientCredentials, ts.URL, map[string]string{vault.SecretClientSecret: "client-secret"})
	if got := injected(t, svc, u); got != "at-1" {
		t.Fatalf("first token = %q, want at-1", got)
	}
	if f := ts.forms[0]; f["grant_type"][0] != "client_credentials" || f["scope"][0] != "read" {
		t.Errorf("token request form = %v", f)
	}
	// Cached until 30 s before it expires, also by a second replica through the store.
	e.clk.Advance(60 * time.Second)
	if got := injected(t, svc, u); got != "at-1" {
		t.Errorf("token 60 s later = %q, want the cached at-1", got)
	}
	if got := injected(t, e.service(), u); got != "at-1" {
		t.Errorf("another replica's token = %q, want the stored at-1", got)
	}
	e.clk.Advance(31 * time.Second)
	if got := injected(t, svc, u); got != "at-2" {
		t.Errorf("token 91 s later = %q, want a new at-2", got)
	}
	if n := ts.callCount(); n != 2 {
		t.Errorf("token endpoint called %d times, want 2", n)
	}
}

func TestRefreshRotates(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ts := newTokenServer(t, "rt-0")
	u := addOAuth(t, svc, "oa", vault.AuthOAuth2Refresh, ts.URL,
		map[string]string{vault.SecretRefreshToken: "rt-0", vault.SecretClientSecret: "client-secret"})

	// 20 concurrent calls with no access token yet: one refresh.
	var wg sync.WaitGroup
	var got sync.Map
	for range 20 {
		wg.Go(func() {
			req := httptest.NewRequest("GET", "https://api.example/x", nil)
			if err := svc.Inject(t.Context(), u, req); err != nil {
				t.Errorf("Inject: %v", err)
				return
			}
			got.Store(req.Header.Get("Authorization"), true)
		})
	}
	wg.Wait()
	if n := ts.callCount(); n != 1 {
		t.Fatalf("token endpoint called %d times for 20 concurrent calls, want 1", n)
	}
	got.Range(func(k, _ any) bool {
		if k != "Bearer at-1" {
			t.Errorf("injected %q, want Bearer at-1", k)
		}
		return true
	})
	// The rotated refresh token was stored with the access token.
	sealed, _, _, err := e.store.GetSecret(t.Context(), "oa", vault.SecretRefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if rt, err := e.ring.Open("oa", vault.SecretRefreshToken, sealed); err != nil || string(rt) != "rt-1" {
		t.Errorf("stored refresh token = %q, %v; want the rotated rt-1", rt, err)
	}
	// Expired: refreshed with the rotated token, which the server accepts.
	e.clk.Advance(time.Hour)
	if got := injected(t, svc, u); got != "at-2" {
		t.Errorf("after expiry = %q, want at-2", got)
	}
	// Setting a new refresh token drops the access token of the old one, on every replica.
	ts.mu.Lock()
	ts.valid["rt-new"] = true
	ts.mu.Unlock()
	other := e.service()
	if got := injected(t, other, u); got != "at-2" {
		t.Fatalf("other replica = %q, want at-2", got)
	}
	if err := svc.SetSecret(t.Context(), "req", admin, "oa", vault.SecretRefreshToken, []byte("rt-new")); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(10 * time.Second) // past the other replica's cache? its token cache is by expiry
	if got := injected(t, svc, u); got != "at-3" {
		t.Errorf("after a new refresh token = %q, want at-3", got)
	}
	if f := ts.forms[2]; f["refresh_token"][0] != "rt-new" {
		t.Errorf("refreshed with %v, want rt-new", f["refresh_token"])
	}
}

// TestRefreshRaceAcrossReplicas: replica B starts a refresh; while its request is in flight
// replica A refreshes too and stores its result first. With rotation the upstream refuses B's
// second use of the refresh token, and B takes A's token and refresh token. Without rotation
// both answers are valid tokens and B keeps its own.
func TestRefreshRaceAcrossReplicas(t *testing.T) {
	for _, rotate := range []bool{true, false} {
		t.Run(fmt.Sprintf("rotate=%t", rotate), func(t *testing.T) {
			e := newEnv(t)
			a, b := e.service(), e.service()
			ts := newTokenServer(t, "rt-0")
			ts.rotate = rotate
			u := addOAuth(t, a, "oa", vault.AuthOAuth2Refresh, ts.URL,
				map[string]string{vault.SecretRefreshToken: "rt-0", vault.SecretClientSecret: "client-secret"})
			var aGot string
			ts.hook = func(n int) {
				if n == 1 { // B's request: A refreshes meanwhile (its request is n == 2)
					aGot = injected(t, a, u)
				}
			}
			bGot := injected(t, b, u)
			wantB := "at-2"
			if !rotate {
				wantB = "at-1"
			}
			if aGot != "at-2" || bGot != wantB {
				t.Errorf("A injected %q and B %q, want at-2 and %s", aGot, bGot, wantB)
			}
			sealed, _, _, err := e.store.GetSecret(t.Context(), "oa", vault.SecretRefreshToken)
			if err != nil {
				t.Fatal(err)
			}
			want := "rt-0"
			if rotate {
				want = "rt-2"
			}
			if rt, _ := e.ring.Open("oa", vault.SecretRefreshToken, sealed); string(rt) != want {
				t.Errorf("stored refresh token = %q, want %s", rt, want)
			}
			if n := ts.callCount(); n != 2 {
				t.Errorf("token endpoint called %d times, want 2", n)
			}
		})
	}
}

func TestRefreshErrorsHideSecrets(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ts := newTokenServer(t, "rt-live")
	u := addOAuth(t, svc, "oa", vault.AuthOAuth2Refresh, ts.URL,
		map[string]string{vault.SecretRefreshToken: "rt-dead-canary", vault.SecretClientSecret: "client-secret"})
	req := httptest.NewRequest("GET", "https://api.example/x", nil)
	err := svc.Inject(t.Context(), u, req)
	if err == nil {
		t.Fatal("Inject with a dead refresh token succeeded")
	}
	if strings.Contains(err.Error(), "canary") || strings.Contains(err.Error(), "client-secret") {
		t.Errorf("the error quotes a secret: %v", err)
	}
	if !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("the error does not name the OAuth error code: %v", err)
	}
	// A pending record before the token endpoint was called, and the failure naming it.
	evs, _ := e.store.ListEvents(t.Context(), audit.Filter{Action: vault.ActionTokenRefresh})
	if len(evs) != 2 || evs[0].Outcome != audit.OutcomeFailure || strings.Contains(evs[0].Detail, "canary") ||
		evs[1].Outcome != audit.OutcomePending || evs[0].Cause != evs[1].ID {
		t.Errorf("refresh events = %+v, want a pending record and one failure naming it, without the secret", evs)
	}
	// A wrong client secret is reported the same way.
	u2 := addOAuth(t, svc, "cc", vault.AuthOAuth2ClientCredentials, ts.URL, map[string]string{vault.SecretClientSecret: "wrong-canary"})
	err = svc.Inject(t.Context(), u2, httptest.NewRequest("GET", "https://api.example/x", nil))
	if err == nil || strings.Contains(err.Error(), "canary") {
		t.Errorf("Inject with a wrong client secret = %v", err)
	}
	// No secret at all.
	u3 := addOAuth(t, svc, "none", vault.AuthOAuth2ClientCredentials, ts.URL, nil)
	err = svc.Inject(context.Background(), u3, httptest.NewRequest("GET", "https://api.example/x", nil))
	if !errors.Is(err, vault.ErrNoCredential) {
		t.Errorf("Inject without a client secret = %v, want ErrNoCredential", err)
	}
}

func TestTokenEndpointRedirectNotFollowed(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	var leaked atomic.Bool
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { leaked.Store(true) }))
	defer evil.Close()
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, evil.URL, http.StatusTemporaryRedirect)
	}))
	defer redir.Close()
	u := addOAuth(t, svc, "cc", vault.AuthOAuth2ClientCredentials, redir.URL, map[string]string{vault.SecretClientSecret: "client-secret"})
	if err := svc.Inject(t.Context(), u, httptest.NewRequest("GET", "https://api.example/x", nil)); err == nil {
		t.Error("Inject through a redirecting token endpoint succeeded")
	}
	if leaked.Load() {
		t.Error("the token request followed a redirect to another server")
	}
}

// TestShortLivedToken: a token that lives 2 s is used for half its life, not refreshed on every
// call; 20 concurrent calls after it lapses cause one refresh.
func TestShortLivedToken(t *testing.T) {
	e := newEnv(t)
	svc := e.service()
	ts := newTokenServer(t, "unused")
	ts.expiresIn = 2
	u := addOAuth(t, svc, "short", vault.AuthOAuth2ClientCredentials, ts.URL, map[string]string{vault.SecretClientSecret: "client-secret"})
	if got := injected(t, svc, u); got != "at-1" {
		t.Fatalf("first token = %q", got)
	}
	e.clk.Advance(500 * time.Millisecond)
	if got := injected(t, svc, u); got != "at-1" {
		t.Fatalf("token 0.5 s later = %q, want the cached at-1", got)
	}
	e.clk.Advance(time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := injected(t, svc, u); got != "at-2" {
				t.Errorf("concurrent token = %q, want at-2", got)
			}
		}()
	}
	wg.Wait()
	if n := ts.callCount(); n != 2 {
		t.Errorf("token endpoint called %d times, want 2", n)
	}
}

// TestTokenStaleAcrossReplicas: a secret replaced through one replica stops another replica's
// cached token within secretTTL, and a re-created upstream of the same name never inherits
// the old one's token.
func TestTokenStaleAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	a, b := e.service(), e.service()
	ts := newTokenServer(t, "unused")
	ts.expiresIn = 3600
	u := addOAuth(t, a, "shared", vault.AuthOAuth2ClientCredentials, ts.URL, map[string]string{vault.SecretClientSecret: "client-secret"})
	if got := injected(t, a, u); got != "at-1" {
		t.Fatalf("first token = %q", got)
	}
	if err := b.SetSecret(t.Context(), "req", admin, "shared", vault.SecretClientSecret, []byte("client-secret")); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(6 * time.Second)
	if got := injected(t, a, u); got != "at-2" {
		t.Fatalf("replica A after the secret changed at B = %q, want a new at-2", got)
	}
	// Removed and re-created under the same name: the old token must not be sent.
	if err := a.RemoveUpstream(t.Context(), "req", admin, "shared"); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Millisecond)
	u2 := addOAuth(t, a, "shared", vault.AuthOAuth2ClientCredentials, ts.URL, map[string]string{vault.SecretClientSecret: "client-secret"})
	if got := injected(t, a, u2); got == "at-2" {
		t.Fatal("the re-created upstream inherited the old upstream's token")
	}
}

// failingAudit refuses every standalone audit record, as a store whose audit writes fail does.
type failingAudit struct{ audit.Store }

func (failingAudit) AppendEvent(context.Context, audit.Event) error {
	return fmt.Errorf("insert audit event: %w", audit.ErrUnavailable)
}

// TestRefreshFailsClosed: when the record of a token refresh cannot be written, the upstream's
// token endpoint is never called (it is an upstream call like any other), and the error says
// the audit trail is unavailable.
func TestRefreshFailsClosed(t *testing.T) {
	e := newEnv(t)
	svc := vault.New(vault.Config{Store: e.store, Keyring: e.ring.keys, Audit: failingAudit{e.store}, Now: e.clk.Now})
	ts := newTokenServer(t, "rt-live")
	for kind, secrets := range map[vault.AuthKind]map[string]string{
		vault.AuthOAuth2Refresh:           {vault.SecretRefreshToken: "rt-live", vault.SecretClientSecret: "client-secret"},
		vault.AuthOAuth2ClientCredentials: {vault.SecretClientSecret: "client-secret"},
	} {
		u := addOAuth(t, svc, "oa-"+string(kind), kind, ts.URL, secrets)
		err := svc.Inject(t.Context(), u, httptest.NewRequest("GET", "https://api.example/x", nil))
		if !errors.Is(err, audit.ErrUnavailable) {
			t.Errorf("%s: Inject with the audit trail down = %v, want audit.ErrUnavailable", kind, err)
		}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.calls != 0 {
		t.Errorf("the token endpoint was called %d times without a durable record", ts.calls)
	}
}
