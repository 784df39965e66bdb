package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/config"

	"github.com/mandate-dev/mandate/internal/pgtest"
)

// The cache of agents (registry/cache.go) must never let a revoked agent authenticate: at the
// replica that revoked it at once, at every other replica as soon as the change feed delivers
// the change. Each case fills the cache first (a token request), then revokes.

// TestAgentCacheLocal: on one server, the request right after the revocation is refused.
func TestAgentCacheLocal(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "cached", true)
	key, _ := newKey(t)
	ts.token(t, a, key, nil) // the agent is now in the cache
	if resp, out := ts.adminPost(t, "/v1/agents/"+a.ID+"/revoke"); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d %v", resp.StatusCode, out)
	}
	resp, out := ts.tokenRequest(t, ts.ccForm(t, a, ts.assertion(t, a, randomID())), ts.proof(t, key, "POST", ts.URL+"/oauth/token", ""))
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("a revoked agent got a token from the replica that revoked it: %v", out)
	}
}

// TestAgentCacheAcrossReplicas: the agent is cached at B, revoked at A; B refuses it once the
// change reaches it. Entries live an hour here, so only the pushed change can drop it.
func TestAgentCacheAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, pgtest.URL(t), 2, func(c *config.Config) { c.AgentCacheTTL = time.Hour })
	a, b := rs.all[0], rs.all[1]
	agent := a.newAgent(t, "cached", true)
	key, _ := newKey(t)
	// A token request at replica ts (its own address; the issuer is A's URL).
	tokenAt := func(ts *testServer) (int, map[string]any) {
		form := a.ccForm(t, agent, a.assertion(t, agent, randomID()))
		req, _ := http.NewRequest("POST", at(ts)+"/oauth/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("DPoP", a.proof(t, key, "POST", a.URL+"/oauth/token", ""))
		resp, out := ts.do(t, req)
		return resp.StatusCode, out
	}
	a.token(t, agent, key, nil)                         // a nonce (every replica accepts every other's)
	if code, out := tokenAt(b); code != http.StatusOK { // fills B's cache
		t.Fatalf("token at B before the revocation: %d %v", code, out)
	}
	if resp, out := a.adminPost(t, "/v1/agents/"+agent.ID+"/revoke"); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke at A: %d %v", resp.StatusCode, out)
	}
	// Within 20 s: far more than a pushed change takes, far less than B's next purge (a minute),
	// which could drop the entry by itself.
	untilWithin(t, 20*time.Second, "B refuses the agent revoked at A", func() (bool, error) {
		code, out := tokenAt(b)
		if d, _ := out["error_description"].(string); code != http.StatusOK && !strings.Contains(d, "revoked") {
			t.Fatalf("B refused for another reason: %d %v", code, out)
		}
		return code != http.StatusOK, nil
	})
}
