package server_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/storetest"
)

// failClosedServer is a server and the DSN of its database, for storetest.FailAuditWrites.
type failClosedServer struct {
	*testServer
	dsn string
}

// newFailClosedServer starts a server on SQLite, or on PostgreSQL (skipped without
// MANDATE_TEST_POSTGRES) when pg is set.
func newFailClosedServer(t *testing.T, pg bool) failClosedServer {
	if !pg {
		ts := newTestServer(t)
		return failClosedServer{ts, filepath.Join(ts.DataDir, server.DatabaseFile)}
	}
	pgtest.BaseURL(t)
	dsn := pgtest.URL(t)
	return failClosedServer{newTestServer(t, func(c *config.Config) { c.Database = dsn }), dsn}
}

// failOp is one audited operation, ready to send: everything it needs was made beforehand.
type failOp struct {
	name string
	// state lists management API paths (GET as the admin) whose answers must not change.
	state []string
	do    func(t *testing.T) (*http.Response, map[string]any)
	// after, if set, checks once the fault is lifted that the refused operation left nothing
	// behind (a client assertion or a claim code that still works was not used up).
	after func(t *testing.T)
}

// TestFailClosed: with the audit trail refusing writes (a trigger on the real database), every
// audited operation is refused with 503 audit_unavailable naming the request id, issues nothing
// and changes nothing — on SQLite, and on PostgreSQL when MANDATE_TEST_POSTGRES is set.
func TestFailClosed(t *testing.T) {
	for _, pg := range []bool{false, true} {
		name := map[bool]string{false: "sqlite", true: "postgres"}[pg]
		t.Run(name, func(t *testing.T) {
			fs := newFailClosedServer(t, pg)
			for _, op := range failOps(t, fs.testServer) {
				t.Run(op.name, func(t *testing.T) { fs.refused(t, op) })
			}
		})
	}
}

// refused runs op with audit writes failing and checks that it was refused and changed nothing.
func (fs failClosedServer) refused(t *testing.T, op failOp) {
	t.Helper()
	snapshot := func() map[string]any {
		out := map[string]any{}
		for _, p := range op.state {
			resp, body := fs.adminJSON(t, "GET", p, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %d %v", p, resp.StatusCode, body)
			}
			out[p] = body
		}
		return out
	}
	before := snapshot()
	restore := storetest.FailAuditWrites(t, fs.dsn, 0)
	resp, body := op.do(t)
	restore()
	if resp.StatusCode != http.StatusServiceUnavailable || body["error"] != "audit_unavailable" {
		t.Errorf("%s with audit writes failing: %d %v; want 503 audit_unavailable", op.name, resp.StatusCode, body)
	}
	if id, _ := body["request_id"].(string); !strings.HasPrefix(id, "req_") {
		t.Errorf("refusal names no request id: %v", body)
	}
	if d, _ := body["error_description"].(string); !strings.Contains(d, "nothing was done") {
		t.Errorf("refusal does not say nothing was done: %q", d)
	}
	for _, k := range []string{"access_token", "grant_token", "claim_code", "token", "id", "agent_id", "grant_id"} {
		if _, ok := body[k]; ok {
			t.Errorf("refusal carries %s: %v", k, body)
		}
	}
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("state changed by the refused %s (-before +after):\n%s", op.name, diff)
	}
	if op.after != nil {
		op.after(t)
	}
}

// failOps builds every audited operation on ts, with what each needs made while audit writes
// still work.
func failOps(t *testing.T, ts *testServer) []failOp {
	t.Helper()
	rs := "https://api.example.com/"
	owner := ts.newAgent(t, "fc-owner", true)
	dpopKey, _ := newKey(t)
	ts.token(t, owner, dpopKey, nil) // holds a nonce from here on
	ccAssertion := ts.assertion(t, owner, randomID())
	revocable := ts.token(t, owner, dpopKey, nil)

	orch := ts.newAgent(t, "fc-orch", true)
	g := ts.grant(t, map[string]any{"agent": orch.ID, "scopes": []string{"read"}, "resources": []string{rs},
		"max_task_ttl": 3600, "expires_in": 86400})
	grantTok := ts.grantToken(t, orch, g)
	resp, out := ts.exchange(t, orch.Key, url.Values{"subject_token": {grantTok}, "subject_token_type": {tokenTypeJWT}})
	if resp.StatusCode != 200 {
		t.Fatalf("start task: %d %v", resp.StatusCode, out)
	}
	taskID := out["txn"].(string)
	revokedGrant := ts.grant(t, map[string]any{"agent": orch.ID, "scopes": []string{"read"}, "resources": []string{rs}})

	victim := ts.newAgent(t, "fc-victim", true)
	nk, ndid := newKey(t)
	if resp, out := ts.postRotation(t, victim.ID, rotation(t, ts, victim, &testAgent{Key: nk, DID: ndid}, randomID())); resp.StatusCode != 200 {
		t.Fatalf("rotate: %d %v", resp.StatusCode, out)
	}
	rotator := ts.newAgent(t, "fc-rotator", true)
	rk, rdid := newKey(t)
	rotationBody := rotation(t, ts, rotator, &testAgent{Key: rk, DID: rdid}, randomID())
	unclaimed := ts.newAgent(t, "fc-unclaimed", false)
	newcomerKey, newcomerDID := newKey(t)
	newcomer := &testAgent{Key: newcomerKey, DID: newcomerDID, Handle: "fc-newcomer"}
	registration := ts.registration(t, newcomer, randomID())

	resp, out = ts.agentCall(t, orch, "POST", "/v1/agent/grant-requests", map[string]any{"scopes": []string{"read"}, "resources": []string{rs}})
	if resp.StatusCode != 201 {
		t.Fatalf("grant request: %d %v", resp.StatusCode, out)
	}
	requestID := out["request_id"].(string)

	resp, out = ts.adminJSON(t, "POST", "/v1/tokens", map[string]any{"name": "fc"})
	if resp.StatusCode != 201 {
		t.Fatalf("create API token: %d %v", resp.StatusCode, out)
	}
	apiTokenID := out["id"].(string)

	addItemsUpstream(t, ts)
	is := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	ts.trust(t, is, nil)
	other := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	svc := ts.svcAccount(t, "fc-ci")
	aud := "https://mandate.example.com"
	rule := ts.rule(t, map[string]any{"issuer": is.URL, "audience": aud, "subject_prefix": "repo:acme/", "service_account": svc, "scope": "deploy:write"})
	_ = rule
	assertion := is.Mint(is.GitHubActions(aud, "acme/app", ""))

	admin := func(method, path string, body any) func(t *testing.T) (*http.Response, map[string]any) {
		return func(t *testing.T) (*http.Response, map[string]any) { return ts.adminJSON(t, method, path, body) }
	}
	return []failOp{
		{name: "token client_credentials",
			do: func(t *testing.T) (*http.Response, map[string]any) {
				return ts.tokenRequest(t, ts.ccForm(t, owner, ccAssertion), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
			},
			after: func(t *testing.T) {
				resp, out := ts.tokenRequest(t, ts.ccForm(t, owner, ccAssertion), ts.proof(t, dpopKey, "POST", ts.URL+"/oauth/token", ""))
				if resp.StatusCode != 200 {
					t.Errorf("the refused issue used up its client assertion: %d %v", resp.StatusCode, out)
				}
			}},
		{name: "token jwt-bearer", state: []string{"/v1/service-accounts/fc-ci"},
			do: func(t *testing.T) (*http.Response, map[string]any) { return ts.jwtBearer(t, assertion, nil, nil) },
			after: func(t *testing.T) {
				if resp, out := ts.jwtBearer(t, assertion, nil, nil); resp.StatusCode != 200 {
					t.Errorf("the refused issue used up its assertion: %d %v", resp.StatusCode, out)
				}
			}},
		{name: "token exchange", state: []string{"/v1/tasks"},
			do: func(t *testing.T) (*http.Response, map[string]any) {
				return ts.exchange(t, orch.Key, url.Values{"subject_token": {grantTok}, "subject_token_type": {tokenTypeJWT}})
			}},
		{name: "token revocation", state: []string{"/v1/revocations"},
			do: func(t *testing.T) (*http.Response, map[string]any) {
				form := ts.ccForm(t, owner, ts.assertion(t, owner, randomID()))
				form.Del("grant_type")
				form.Set("token", revocable)
				req, _ := http.NewRequest("POST", ts.URL+"/oauth/revoke", strings.NewReader(form.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				return ts.do(t, req)
			}},
		{name: "API token revocation", state: []string{"/v1/tokens"}, do: admin("DELETE", "/v1/tokens/"+apiTokenID, nil)},
		{name: "agent revocation", state: []string{"/v1/agents/" + victim.ID, "/v1/revocations"}, do: admin("POST", "/v1/agents/"+victim.ID+"/revoke", nil)},
		{name: "key revocation", state: []string{"/v1/agents/" + victim.ID, "/v1/revocations"},
			do: admin("POST", "/v1/agents/"+victim.ID+"/keys/revoke", map[string]string{"did": victim.DID})},
		{name: "key rotation", state: []string{"/v1/agents/" + rotator.ID},
			// The refused request's jti stays seen (a replay cache only ever refuses more).
			do: func(t *testing.T) (*http.Response, map[string]any) {
				return ts.postRotation(t, rotator.ID, rotationBody)
			}},
		{name: "task revocation", state: []string{"/v1/tasks/" + taskID, "/v1/revocations"}, do: admin("POST", "/v1/tasks/"+taskID+"/revoke", nil)},
		{name: "grant revocation", state: []string{"/v1/grants/" + revokedGrant, "/v1/tasks", "/v1/revocations"},
			do: admin("POST", "/v1/grants/"+revokedGrant+"/revoke", nil)},
		{name: "grant creation", state: []string{"/v1/grants"},
			do: admin("POST", "/v1/grants", map[string]any{"agent": orch.ID, "scopes": []string{"read"}, "resources": []string{rs}})},
		{name: "grant request approval", state: []string{"/v1/grants", "/v1/grant-requests"},
			do: admin("POST", "/v1/grant-requests/"+requestID+"/approve", map[string]any{})},
		{name: "grant request denial", state: []string{"/v1/grants", "/v1/grant-requests"},
			do: admin("POST", "/v1/grant-requests/"+requestID+"/deny", map[string]any{})},
		{name: "agent registration", state: []string{"/v1/agents"},
			do: func(t *testing.T) (*http.Response, map[string]any) { return ts.register(t, newcomer, registration) }},
		{name: "agent claim", state: []string{"/v1/agents/" + unclaimed.ID},
			do: func(t *testing.T) (*http.Response, map[string]any) { return ts.claim(t, ts.Admin, unclaimed.Code) },
			after: func(t *testing.T) {
				if resp, out := ts.claim(t, ts.Admin, unclaimed.Code); resp.StatusCode != 200 {
					t.Errorf("the refused claim used up the claim code: %d %v", resp.StatusCode, out)
				}
			}},
		{name: "user creation", state: []string{"/v1/users"}, do: admin("POST", "/v1/users", map[string]any{"name": "fc-carol"})},
		{name: "API token creation", state: []string{"/v1/tokens"}, do: admin("POST", "/v1/tokens", map[string]any{"name": "fc-2"})},
		{name: "signing key rotation", state: []string{"/v1/keys"}, do: admin("POST", "/v1/keys/rotate", nil)},
		{name: "upstream creation", state: []string{"/v1/upstreams"},
			do: admin("POST", "/v1/upstreams", map[string]any{"name": "fc-up", "base_url": "http://127.0.0.1:1", "auth": "bearer", "allow_private": true,
				"routes": []map[string]any{{"scope": "x:read", "methods": []string{"GET"}, "paths": []string{"/**"}}}})},
		{name: "upstream secret", state: []string{"/v1/upstreams/items"},
			do: admin("PUT", "/v1/upstreams/items/secrets/credential", map[string]string{"secret": "sk_new_" + randomID()})},
		{name: "upstream routes", state: []string{"/v1/upstreams/items"},
			do: admin("PUT", "/v1/upstreams/items/routes", map[string]any{"routes": []map[string]any{{"scope": "items:write", "methods": []string{"POST"}, "paths": []string{"/v1/**"}}}})},
		{name: "upstream deletion", state: []string{"/v1/upstreams"}, do: admin("DELETE", "/v1/upstreams/items", nil)},
		{name: "service account creation", state: []string{"/v1/service-accounts"}, do: admin("POST", "/v1/service-accounts", map[string]any{"name": "fc-new"})},
		{name: "service account disable", state: []string{"/v1/service-accounts/fc-ci"}, do: admin("POST", "/v1/service-accounts/fc-ci/disable", nil)},
		{name: "federation issuer", state: []string{"/v1/federation/issuers"}, do: admin("POST", "/v1/federation/issuers", map[string]any{"issuer": other.URL})},
		{name: "federation rule", state: []string{"/v1/federation/rules"},
			do: admin("POST", "/v1/federation/rules", map[string]any{"issuer": is.URL, "audience": aud, "subject_prefix": "repo:other/", "service_account": svc, "scope": "deploy:write"})},
		{name: "federation rule disable", state: []string{"/v1/federation/rules"}, do: admin("POST", "/v1/federation/rules/"+rule+"/disable", nil)},
	}
}

// TestFailClosedProxy: with audit writes refused, a proxied call is refused and the upstream (a
// real server on 127.0.0.1 counting every request it gets) receives nothing; once the fault is
// lifted the same call goes through.
func TestFailClosedProxy(t *testing.T) {
	for _, pg := range []bool{false, true} {
		name := map[bool]string{false: "sqlite", true: "postgres"}[pg]
		t.Run(name, func(t *testing.T) {
			fs := newFailClosedServer(t, pg)
			ts := fs.testServer
			var hits atomic.Int64
			key := "sk_live_" + randomID()
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.Header.Get("Authorization") != "Bearer "+key {
					http.Error(w, "bad key", http.StatusUnauthorized)
					return
				}
				w.Write([]byte(`{"ok":true}`))
			}))
			t.Cleanup(up.Close)
			resp, out := ts.adminJSON(t, "POST", "/v1/upstreams", map[string]any{
				"name": "items", "base_url": up.URL, "auth": "bearer", "allow_private": true,
				"routes": []map[string]any{{"scope": "items:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
			})
			if resp.StatusCode != 201 {
				t.Fatalf("add upstream: %d %v", resp.StatusCode, out)
			}
			if resp, out := ts.adminJSON(t, "PUT", "/v1/upstreams/items/secrets/credential", map[string]string{"secret": key}); resp.StatusCode != 204 {
				t.Fatalf("set secret: %d %v", resp.StatusCode, out)
			}
			a := ts.newAgent(t, "fc-caller", true)
			g := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"}})
			tok := ts.startTask(t, a, ts.grantToken(t, a, g))
			call := func() (*http.Response, map[string]any) {
				u := ts.URL + "/proxy/items/v1/items"
				req, _ := http.NewRequest("GET", u, nil)
				req.Header.Set("Authorization", "DPoP "+tok)
				req.Header.Set("DPoP", ts.proof(t, a.Key, "GET", u, tok))
				return ts.do(t, req)
			}

			restore := storetest.FailAuditWrites(t, fs.dsn, 0)
			resp, out = call()
			restore()
			if resp.StatusCode != http.StatusServiceUnavailable || out["error"] != "audit_unavailable" {
				t.Errorf("proxied call with audit writes failing: %d %v; want 503 audit_unavailable", resp.StatusCode, out)
			}
			if n := hits.Load(); n != 0 {
				t.Errorf("the upstream received %d requests while the audit trail could not record them, want 0", n)
			}
			if resp, out := call(); resp.StatusCode != 200 || hits.Load() != 1 {
				t.Errorf("proxied call once the fault is lifted: %d %v, upstream hits %d; want 200 and 1", resp.StatusCode, out, hits.Load())
			}
		})
	}
}
