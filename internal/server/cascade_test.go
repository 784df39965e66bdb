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
