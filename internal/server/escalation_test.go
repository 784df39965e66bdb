package server_test

import (
	"crypto"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// TestEscalationRefused: each attempt to get more than the parent holds, or to use authority
// that is gone, is refused with the matching OAuth error and leaves a denial in the audit trail.
func TestEscalationRefused(t *testing.T) {
	c := newChain(t)
	ts := c.ts
	orch, res := c.orch, c.res
	ik := c.instance.Key
	fromGrant := func(extra url.Values) url.Values {
		f := url.Values{"subject_token": {c.grantTok}, "subject_token_type": {tokenTypeJWT}}
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	fromTask := func(extra url.Values) url.Values {
		f := url.Values{"subject_token": {c.taskTok}, "subject_token_type": {tokenTypeAccess}}
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	delegateTo := func(a *testAgent, extra url.Values) url.Values {
		f := fromTask(url.Values{"actor_token": {ts.actorToken(t, a.Key, a.DID, nil)}, "actor_token_type": {tokenTypeJWT}})
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	actor := func(edit map[string]any) url.Values {
		return url.Values{"actor_token": {ts.actorToken(t, res.Key, res.DID, edit)}, "actor_token_type": {tokenTypeJWT}}
	}
	revokedAgent := ts.newAgent(t, "revoked-actor", true)
	ts.adminPost(t, "/v1/agents/"+revokedAgent.ID+"/revoke")
	unclaimed := ts.newAgent(t, "unclaimed-actor", false)
	third := ts.newAgent(t, "third", true)
	replayed := ts.actorToken(t, res.Key, res.DID, nil)
	if resp, out := ts.exchange(t, ik, fromTask(url.Values{"actor_token": {replayed}, "actor_token_type": {tokenTypeJWT}, "scope": {"repo:read"}})); resp.StatusCode != 200 {
		t.Fatalf("first use of the actor token: %d %v", resp.StatusCode, out)
	}
	selfTok := ts.token(t, orch, orch.Key, nil)
	foreign := resign(t, c.taskTok, c.instance.Key, "foreign-kid") // signed by a key this server never published

	// A grant without sub-delegation, and a task under it.
	flat := ts.grant(t, map[string]any{"agent": "@orchestrator", "scopes": []string{"repo:read"}, "resources": []string{c.rs.URL}})
	flatTask := ts.startTask(t, orch, ts.grantToken(t, orch, flat))
	// The researcher's depth-2 token: the grant allows no third level.
	deep := c.childTok

	tests := []struct {
		name   string
		key    crypto.Signer
		form   url.Values
		code   string
		reason string
	}{
		{"start: widen scope", orch.Key, fromGrant(url.Values{"scope": {"repo:read admin"}}), "invalid_scope", "scope"},
		{"start: add a resource", orch.Key, fromGrant(url.Values{"resource": {"https://evil.example/"}}), "invalid_target", "resource"},
		{"start: details outside the grant", orch.Key, fromGrant(url.Values{"authorization_details": {`[{"type":"repo","repos":["other/x"]}]`}}), "invalid_authorization_details", "authorization_details"},
		{"start: details of another type", orch.Key, fromGrant(url.Values{"authorization_details": {`[{"type":"payments"}]`}}), "invalid_authorization_details", "authorization_details"},
		{"start: task longer than the grant allows", orch.Key, fromGrant(url.Values{"task_ttl": {"7200"}}), "invalid_request", "ttl"},
		{"start: a budget key nothing enforces", orch.Key, fromGrant(url.Values{"budget": {`{"requests": 5}`}}), "invalid_request", "budget"},
		{"start: proof by a key that is not the grant token's cnf", res.Key, fromGrant(nil), "invalid_grant", "key_mismatch"},
		{"start: someone else's grant token with their own proof key", ik, fromGrant(nil), "invalid_grant", "key_mismatch"},
		{"start: another registered agent as actor", orch.Key, fromGrant(actor(nil)), "invalid_request", "actor_token"},
		{"malformed subject token", orch.Key, url.Values{"subject_token": {"garbage"}, "subject_token_type": {tokenTypeJWT}}, "invalid_request", "subject_token"},
		{"access token from another issuer", ik, url.Values{"subject_token": {foreign}, "subject_token_type": {tokenTypeAccess}}, "invalid_request", "subject_token"},
		{"self token as subject", orch.Key, url.Values{"subject_token": {selfTok}, "subject_token_type": {tokenTypeAccess}}, "invalid_request", "subject_token"},
		{"wrong subject_token_type", orch.Key, url.Values{"subject_token": {c.grantTok}, "subject_token_type": {"urn:x"}}, "invalid_request", "subject_token_type"},
		{"requested_token_type other than access token", orch.Key, fromGrant(url.Values{"requested_token_type": {"urn:ietf:params:oauth:token-type:refresh_token"}}), "invalid_request", "requested_token_type"},
		{"audience instead of resource", orch.Key, fromGrant(url.Values{"audience": {"api"}}), "invalid_target", "audience"},
		{"delegate: widen scope", ik, delegateTo(res, url.Values{"scope": {"repo:read admin"}}), "invalid_scope", "scope"},
		{"delegate: resource outside the task", ik, delegateTo(res, url.Values{"resource": {"https://evil.example/"}}), "invalid_target", "resource"},
		{"delegate: details outside the task", ik, delegateTo(res, url.Values{"authorization_details": {`[{"type":"repo","repos":["acme/*"],"actions":["admin"]}]`}}), "invalid_authorization_details", "authorization_details"},
		{"delegate: longer than the parent task", ik, delegateTo(res, url.Values{"task_ttl": {"3600"}}), "invalid_request", "ttl"},
		{"delegate: deeper than the grant allows", res.Key, url.Values{"subject_token": {deep}, "subject_token_type": {tokenTypeAccess},
			"actor_token": {ts.actorToken(t, third.Key, third.DID, nil)}, "actor_token_type": {tokenTypeJWT}}, "invalid_grant", "depth"},
		{"delegate: the grant forbids sub-delegation", orch.Key, url.Values{"subject_token": {flatTask}, "subject_token_type": {tokenTypeAccess},
			"actor_token": {ts.actorToken(t, res.Key, res.DID, nil)}, "actor_token_type": {tokenTypeJWT}}, "invalid_grant", "subdelegation"},
		{"delegate: proof by a key that is not the task token's cnf", orch.Key, delegateTo(res, nil), "invalid_grant", "key_mismatch"},
		{"delegate: to a REVOKED agent", ik, delegateTo(revokedAgent, nil), "invalid_grant", "actor_status"},
		{"delegate: to an UNCLAIMED agent", ik, delegateTo(unclaimed, nil), "invalid_grant", "actor_status"},
		{"delegate: replayed actor token", ik, fromTask(url.Values{"actor_token": {replayed}, "actor_token_type": {tokenTypeJWT}}), "invalid_request", "actor_token_replay"},
		{"delegate: actor token for another audience", ik, fromTask(actor(map[string]any{"aud": "https://elsewhere.example"})), "invalid_request", "actor_token_aud"},
		{"delegate: expired actor token", ik, fromTask(actor(map[string]any{"exp": ts.Clock.Now().Add(-time.Minute).Unix()})), "invalid_request", "actor_token_expired"},
		{"delegate: actor token valid for too long", ik, fromTask(actor(map[string]any{"exp": ts.Clock.Now().Add(time.Hour).Unix()})), "invalid_request", "actor_token_lifetime"},
		{"delegate: actor token whose iss is not its key", ik, fromTask(actor(map[string]any{"iss": orch.DID})), "invalid_request", "actor_token"},
		{"delegate: actor token without actor_token_type", ik, fromTask(url.Values{"actor_token": {ts.actorToken(t, res.Key, res.DID, nil)}}), "invalid_request", "actor_token_type"},
		{"delegate: actor token whose kid has a #fragment", ik, fromTask(url.Values{"actor_token": {signJWS(t, res.Key, res.DID+"#"+strings.TrimPrefix(res.DID, "did:key:"), "JWT",
			map[string]any{"iss": res.DID + "#" + strings.TrimPrefix(res.DID, "did:key:"), "aud": ts.URL, "exp": ts.Clock.Now().Add(time.Minute).Unix(), "jti": randomID()})},
			"actor_token_type": {tokenTypeJWT}}), "invalid_request", "actor_token"},
		{"delegate: a registration JWS as the actor token", ik, fromTask(url.Values{"actor_token": {ts.registration(t, res, randomID())}, "actor_token_type": {tokenTypeJWT}}), "invalid_request", "actor_token"},
		{"refresh: a task_ttl on a refresh", ik, fromTask(url.Values{"task_ttl": {"60"}}), "invalid_request", "ttl"},
		{"refresh: a scope outside the task", ik, fromTask(url.Values{"scope": {"admin"}}), "invalid_scope", "scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.denials(t, tt.reason)
			resp, out := ts.exchange(t, tt.key, tt.form)
			if resp.StatusCode != 400 || out["error"] != tt.code {
				t.Fatalf("got %d %v, want 400 %s", resp.StatusCode, out, tt.code)
			}
			if d, _ := out["error_description"].(string); d == "" || strings.Contains(d, c.taskTok) {
				t.Errorf("description %q: want a sentence that echoes no token", d)
			}
			if ts.denials(t, tt.reason) != before+1 {
				t.Errorf("no audit denial with reason %q", tt.reason)
			}
		})
	}

	// Authority that is gone: a revoked grant, an ended task, a revoked task, an expired grant.
	gone := []struct {
		name   string
		setup  func() (crypto.Signer, url.Values)
		code   string
		reason string
	}{
		{"revoked grant", func() (crypto.Signer, url.Values) {
			g := ts.grant(t, map[string]any{"agent": "@orchestrator", "scopes": []string{"repo:read"}, "resources": []string{c.rs.URL}})
			tok := ts.grantToken(t, orch, g)
			ts.adminPost(t, "/v1/grants/"+g+"/revoke")
			return orch.Key, url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeJWT}}
		}, "invalid_grant", "grant_revoked"},
		{"ended task", func() (crypto.Signer, url.Values) {
			tok := ts.startTask(t, orch, ts.grantToken(t, orch, flat))
			ts.adminPost(t, "/v1/tasks/"+taskOf(t, tok)+"/end")
			return orch.Key, url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeAccess}}
		}, "invalid_grant", "task_ended"},
		{"revoked task", func() (crypto.Signer, url.Values) {
			tok := ts.startTask(t, orch, ts.grantToken(t, orch, flat))
			ts.adminPost(t, "/v1/tasks/"+taskOf(t, tok)+"/revoke")
			return orch.Key, url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeAccess}}
		}, "invalid_grant", "task_ended"},
		{"expired grant", func() (crypto.Signer, url.Values) {
			g := ts.grant(t, map[string]any{"agent": "@orchestrator", "scopes": []string{"repo:read"}, "resources": []string{c.rs.URL}, "expires_in": 120})
			tok := ts.grantToken(t, orch, g)
			ts.Clock.Advance(3 * time.Minute)
			return orch.Key, url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeJWT}}
		}, "invalid_request", "subject_token"},
	}
	for _, tt := range gone {
		t.Run(tt.name, func(t *testing.T) {
			key, form := tt.setup()
			before := ts.denials(t, tt.reason)
			resp, out := ts.exchange(t, key, form)
			if resp.StatusCode != 400 || out["error"] != tt.code {
				t.Fatalf("got %d %v, want 400 %s", resp.StatusCode, out, tt.code)
			}
			if ts.denials(t, tt.reason) != before+1 {
				t.Errorf("no audit denial with reason %q", tt.reason)
			}
		})
	}

	t.Run("grant token used directly at a resource", func(t *testing.T) {
		before := ts.denials(t, "typ")
		whoami := ts.URL + "/v1/agent/whoami"
		resp, out := ts.callResource(t, "DPoP "+c.grantTok, ts.proof(t, orch.Key, "GET", whoami, c.grantTok))
		if resp.StatusCode != 401 || out["error"] != "invalid_token" {
			t.Fatalf("got %d %v", resp.StatusCode, out)
		}
		if ts.denials(t, "typ") != before+1 {
			t.Error("no audit denial")
		}
	})
}

// startTask exchanges a grant token for a task token bound to the agent's own key.
func (ts *testServer) startTask(t testing.TB, a *testAgent, grantTok string) string {
	t.Helper()
	resp, out := ts.exchange(t, a.Key, url.Values{"subject_token": {grantTok}, "subject_token_type": {tokenTypeJWT}})
	if resp.StatusCode != 200 {
		t.Fatalf("start task: %d %v", resp.StatusCode, out)
	}
	return out["access_token"].(string)
}

// taskOf reads the txn claim of a token.
func taskOf(t testing.TB, tok string) string { s, _ := claimOf(t, tok, "txn").(string); return s }

// jtiOf reads the jti claim of a token.
func jtiOf(t testing.TB, tok string) string { s, _ := claimOf(t, tok, "jti").(string); return s }

// TestProofReplayAcrossReplicas: two replicas on one PostgreSQL database. A token-endpoint proof
// used at one is refused at the other, though each has its own in-memory replay cache: its jti is
// used up in the database with the issue. (SQLite is one process: its proof ids stay in memory,
// TestOneNodeKeepsProofIDsInMemory.)
func TestProofReplayAcrossReplicas(t *testing.T) {
	dsn := pgtest.URL(t)
	a := newTestServer(t, func(c *config.Config) { c.Database = dsn })
	// Replica B: the same database, data directory (master key) and public issuer.
	b := newTestServer(t, func(c *config.Config) { c.Database, c.DataDir, c.Issuer = dsn, a.DataDir, a.URL })
	bURL := "http://" + b.Addr
	agent := a.newAgent(t, "two-replicas", true)
	a.token(t, agent, agent.Key, nil) // fetch a nonce (valid on both: derived from the shared master key)
	proof := a.proof(t, agent.Key, "POST", a.URL+"/oauth/token", "")
	if resp, out := a.tokenRequest(t, a.ccForm(t, agent, a.assertion(t, agent, randomID())), proof); resp.StatusCode != 200 {
		t.Fatalf("first use at replica A: %d %v", resp.StatusCode, out)
	}
	form := a.ccForm(t, agent, a.assertion(t, agent, randomID()))
	req, _ := http.NewRequest("POST", bURL+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("DPoP", proof)
	resp, out := b.do(t, req)
	if resp.StatusCode == 200 {
		t.Fatalf("replayed proof accepted at replica B: %v", out)
	}
	// And a fresh proof works at B: the refusal above was the replay.
	form = a.ccForm(t, agent, a.assertion(t, agent, randomID()))
	req, _ = http.NewRequest("POST", bURL+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("DPoP", a.proof(t, agent.Key, "POST", a.URL+"/oauth/token", ""))
	if resp, out := b.do(t, req); resp.StatusCode != 200 {
		t.Fatalf("fresh proof at replica B: %d %v", resp.StatusCode, out)
	}
}
