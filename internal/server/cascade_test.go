package server_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestRevocationCascade: revoking the grant, revoking the orchestrator, or ending the top task
// in the middle of the three-level chain stops the researcher at the resource within the
// verifier's 1 s feed bound (the test clock moves 1 s; no sleeping), and every token of the chain
// introspects as inactive.
func TestRevocationCascade(t *testing.T) {
	for name, revoke := range map[string]func(c *chain){
		"grant revoked":        func(c *chain) { c.ts.adminPost(t, "/v1/grants/"+c.grantID+"/revoke") },
		"orchestrator revoked": func(c *chain) { c.ts.adminPost(t, "/v1/agents/"+c.orch.ID+"/revoke") },
		"top task ended":       func(c *chain) { c.ts.adminPost(t, "/v1/tasks/"+taskOf(t, c.taskTok)+"/end") },
	} {
		t.Run(name, func(t *testing.T) {
			c := newChain(t)
			ts := c.ts
			if resp, out := c.rs.call(t, ts, c.res.Key, c.childTok); resp.StatusCode != 200 {
				t.Fatalf("before: %d %v", resp.StatusCode, out)
			}
			for _, tok := range []string{c.taskTok, c.childTok} {
				if !ts.introspectActive(t, tok) {
					t.Fatal("a chain token is inactive before the revocation")
				}
			}
			revoke(c)
			ts.Clock.Advance(time.Second)
			resp, out := c.rs.call(t, ts, c.res.Key, c.childTok)
			if resp.StatusCode != 401 || out["error"] != "invalid_token" {
				t.Fatalf("researcher after the revocation: %d %v", resp.StatusCode, out)
			}
			if d, _ := out["error_description"].(string); !strings.Contains(d, "revoked") && !strings.Contains(d, "ended") {
				t.Errorf("refusal %q does not say what was revoked", d)
			}
			for i, tok := range []string{c.taskTok, c.childTok} {
				if ts.introspectActive(t, tok) {
					t.Errorf("token %d of the chain still introspects active", i)
				}
			}
			// And no new token can be drawn from any of them.
			resp, out = ts.exchange(t, c.res.Key, url.Values{"subject_token": {c.childTok}, "subject_token_type": {tokenTypeAccess}})
			if resp.StatusCode != 400 || out["error"] != "invalid_grant" {
				t.Errorf("refresh after the revocation: %d %v", resp.StatusCode, out)
			}
		})
	}
}

func (ts *testServer) introspectActive(t *testing.T, tok string) bool {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.URL+"/oauth/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+ts.Admin)
	resp, out := ts.do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("introspect: %d %v", resp.StatusCode, out)
	}
	return out["active"] == true
}

// TestKeyRevocation: revoking one key of an agent stops the tokens bound to it at once — at the
// server's own resources, introspection, and third-party verifiers following the feed — while
// the agent's other key keeps working. The last usable key cannot be revoked.
func TestKeyRevocation(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "two-keys", true)
	rs := newResourceServer(t, ts)
	k, did := newKey(t)
	next := &testAgent{Key: k, DID: did, ID: a.ID, Handle: a.Handle}
	if resp, out := ts.postRotation(t, a.ID, rotation(t, ts, a, next, randomID())); resp.StatusCode != 200 {
		t.Fatalf("rotate: %d %v", resp.StatusCode, out)
	}
	g := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"read"}, "resources": []string{rs.URL}})
	oldTok := ts.startTask(t, next, ts.grantToken(t, next, g)) // the grant token is bound to the current key
	selfOld := ts.token(t, a, a.Key, nil)                      // bound to the old key, still in its grace period
	whoami := ts.URL + "/v1/agent/whoami"
	if resp, _ := ts.callResource(t, "DPoP "+selfOld, ts.proof(t, a.Key, "GET", whoami, selfOld)); resp.StatusCode != 200 {
		t.Fatal("old key before the revocation")
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/agents/"+a.ID+"/keys/revoke", map[string]string{"did": a.DID}); resp.StatusCode != 200 {
		t.Fatalf("revoke key: %d %v", resp.StatusCode, out)
	}
	ts.Clock.Advance(time.Second)
	if resp, out := ts.callResource(t, "DPoP "+selfOld, ts.proof(t, a.Key, "GET", whoami, selfOld)); resp.StatusCode != 401 {
		t.Errorf("token bound to the revoked key at our resource: %d %v", resp.StatusCode, out)
	}
	if ts.introspectActive(t, selfOld) {
		t.Error("token bound to the revoked key introspects active")
	}
	if resp, out := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, a.Key, "POST", ts.URL+"/oauth/token", "")); resp.StatusCode != 401 {
		t.Errorf("the revoked key still authenticates: %d %v", resp.StatusCode, out)
	}
	// The other key is untouched.
	if resp, out := rs.call(t, ts, next.Key, oldTok); resp.StatusCode != 200 {
		t.Errorf("task token on the remaining key: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/agents/"+a.ID+"/keys/revoke", map[string]string{"did": next.DID}); resp.StatusCode != 409 {
		t.Errorf("revoking the last key: %d %v, want 409", resp.StatusCode, out)
	}
	// A third-party verifier learns it from the feed.
	resp, out := ts.do(t, mustReq(t, "GET", ts.URL+"/v1/revocations"))
	found := false
	for _, r := range out["revocations"].([]any) {
		found = found || r.(map[string]any)["kind"] == "key"
	}
	if resp.StatusCode != 200 || !found {
		t.Errorf("no key entry in the revocation feed: %v", out)
	}
}

// TestRevokedKeyEndsItsTasks: a task given to a key, even one whose tokens were moved onto an
// instance key, ends when that key is revoked — at remote verifiers too.
func TestRevokedKeyEndsItsTasks(t *testing.T) {
	ts := newTestServer(t)
	rs := newResourceServer(t, ts)
	a := ts.newAgent(t, "stolen-key", true)
	g := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"read"}, "resources": []string{rs.URL}})
	ik, idid := newKey(t)
	resp, out := ts.exchange(t, a.Key, url.Values{"subject_token": {ts.grantToken(t, a, g)}, "subject_token_type": {tokenTypeJWT},
		"actor_token": {ts.actorToken(t, ik, idid, nil)}, "actor_token_type": {tokenTypeJWT}})
	if resp.StatusCode != 200 {
		t.Fatalf("start on an instance key: %d %v", resp.StatusCode, out)
	}
	tok := out["access_token"].(string)
	if resp, _ := rs.call(t, ts, ik, tok); resp.StatusCode != 200 {
		t.Fatal("instance-key token before the revocation")
	}
	k2, did2 := newKey(t)
	if resp, out := ts.postRotation(t, a.ID, rotation(t, ts, a, &testAgent{Key: k2, DID: did2}, randomID())); resp.StatusCode != 200 {
		t.Fatalf("rotate: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/agents/"+a.ID+"/keys/revoke", map[string]string{"did": a.DID}); resp.StatusCode != 200 {
		t.Fatalf("revoke the old key: %d %v", resp.StatusCode, out)
	}
	ts.Clock.Advance(time.Second)
	if resp, out := rs.call(t, ts, ik, tok); resp.StatusCode != 401 {
		t.Errorf("instance-key token of a task given to the revoked key: %d %v", resp.StatusCode, out)
	}
	if ts.introspectActive(t, tok) {
		t.Error("it still introspects active")
	}
}
