package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestGrantRequestFlow: an agent asks; the poll says authorization_pending (and slow_down when
// too eager); the owner approves, narrowing; the poll returns the grant token. A denied request
// polls as access_denied.
func TestGrantRequestFlow(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "asker", true)
	ask := map[string]any{"scopes": []string{"repo:read", "repo:write"}, "resources": []string{"https://api.example.com/"},
		"max_task_ttl": 1800, "reason": "nightly dependency updates"}

	resp, req := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", ask)
	if resp.StatusCode != 201 || req["status"] != "pending" {
		t.Fatalf("request: %d %v", resp.StatusCode, req)
	}
	id := req["request_id"].(string)
	poll := func() (int, map[string]any) {
		resp, out := ts.agentCall(t, a, "GET", "/v1/agent/grant-requests/"+id, nil)
		return resp.StatusCode, out
	}
	if code, out := poll(); code != 400 || out["error"] != "authorization_pending" {
		t.Fatalf("first poll: %d %v", code, out)
	}
	if code, out := poll(); code != 400 || out["error"] != "slow_down" {
		t.Fatalf("eager poll: %d %v", code, out)
	}
	resp, list := ts.adminJSON(t, "GET", "/v1/grant-requests?status=pending", nil)
	if resp.StatusCode != 200 || len(list["requests"].([]any)) != 1 {
		t.Fatalf("owner's pending requests: %d %v", resp.StatusCode, list)
	}
	// Approving with a wider scope than asked is refused; narrowing is fine.
	if resp, out := ts.adminJSON(t, "POST", "/v1/grant-requests/"+id+"/approve", map[string]any{"scopes": []string{"admin"}}); resp.StatusCode != 400 {
		t.Fatalf("approve wider: %d %v", resp.StatusCode, out)
	}
	resp, g := ts.adminJSON(t, "POST", "/v1/grant-requests/"+id+"/approve", map[string]any{"scopes": []string{"repo:read"}, "max_task_ttl": 600})
	if resp.StatusCode != 201 || len(g["scopes"].([]any)) != 1 || g["max_task_ttl"].(float64) != 600 {
		t.Fatalf("approve narrowed: %d %v", resp.StatusCode, g)
	}
	ts.Clock.Advance(6 * time.Second)
	code, out := poll()
	if code != 200 || out["grant_token"] == nil || out["grant_id"] != g["grant_id"] {
		t.Fatalf("poll after approval: %d %v", code, out)
	}
	// The grant token works: it starts a task within the narrowed scope.
	if tok := ts.startTask(t, a, out["grant_token"].(string)); tok == "" {
		t.Fatal("no task token")
	}

	resp, req = ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", ask)
	if resp.StatusCode != 201 {
		t.Fatalf("second request: %d %v", resp.StatusCode, req)
	}
	id = req["request_id"].(string)
	if resp, out := ts.adminJSON(t, "POST", "/v1/grant-requests/"+id+"/deny", nil); resp.StatusCode != 200 || out["status"] != "denied" {
		t.Fatalf("deny: %d %v", resp.StatusCode, out)
	}
	if code, out := poll(); code != 400 || out["error"] != "access_denied" {
		t.Fatalf("poll after denial: %d %v", code, out)
	}
}

// TestGrantableBound: a grant never gives more than its principal may give. A user an admin has
// bounded can grant, and approve requests, only within the bound.
func TestGrantableBound(t *testing.T) {
	ts := newTestServer(t)
	resp, out := ts.adminJSON(t, "POST", "/v1/users", map[string]any{"name": "bob",
		"grantable": map[string]any{"scopes": []string{"repo:read"}, "resources": []string{"https://api.example.com"}}})
	if resp.StatusCode != 201 {
		t.Fatalf("create bounded user: %d %v", resp.StatusCode, out)
	}
	_, tok := ts.adminJSON(t, "POST", "/v1/tokens", map[string]any{"user": "bob"})
	bob := tok["token"].(string)
	a := ts.newAgent(t, "bobs-agent", false)
	if resp, out := ts.claim(t, bob, a.Code); resp.StatusCode != 200 {
		t.Fatalf("bob claims: %d %v", resp.StatusCode, out)
	}
	asBob := func(method, path string, body any) (int, map[string]any) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(string(b)))
		req.Header.Set("Authorization", "Bearer "+bob)
		req.Header.Set("Content-Type", "application/json")
		resp, out := ts.do(t, req)
		return resp.StatusCode, out
	}
	for name, tc := range map[string]struct {
		scopes, resources []string
		status            int
	}{
		"within the bound":     {[]string{"repo:read"}, []string{"https://api.example.com/"}, 201},
		"a scope beyond it":    {[]string{"repo:read", "repo:write"}, []string{"https://api.example.com/"}, 403},
		"a resource beyond it": {[]string{"repo:read"}, []string{"https://other.example.com/"}, 403},
	} {
		t.Run(name, func(t *testing.T) {
			code, out := asBob("POST", "/v1/grants", map[string]any{"agent": a.ID, "scopes": tc.scopes, "resources": tc.resources})
			if code != tc.status {
				t.Fatalf("bob grants %v on %v: %d %v, want %d", tc.scopes, tc.resources, code, out, tc.status)
			}
		})
	}
	// Approving an agent's request for more than the bound is refused the same way.
	_, req := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", map[string]any{"scopes": []string{"repo:write"}, "resources": []string{"https://api.example.com/"}})
	if code, out := asBob("POST", "/v1/grant-requests/"+req["request_id"].(string)+"/approve", nil); code != 403 {
		t.Fatalf("bob approves beyond his bound: %d %v", code, out)
	}
}

// TestAgentRoutesNeedSelfToken: a task token (here on an instance key) cannot act for the agent
// as a whole: list its grants, ask for grants, or end its other tasks.
func TestAgentRoutesNeedSelfToken(t *testing.T) {
	c := newChain(t)
	ts := c.ts
	// A grant whose resources include the server itself, so its task tokens reach /v1/agent/*.
	g := ts.grant(t, map[string]any{"agent": c.orch.ID, "scopes": []string{"agent"}, "resources": []string{ts.URL}})
	tok := ts.startTask(t, c.orch, ts.grantToken(t, c.orch, g))
	for _, rt := range []struct{ method, path string }{
		{"GET", "/v1/agent/grants"},
		{"POST", "/v1/agent/tasks/" + taskOf(t, c.taskTok) + "/end"},
	} {
		req, _ := http.NewRequest(rt.method, ts.URL+rt.path, nil)
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", ts.proof(t, c.orch.Key, rt.method, ts.URL+rt.path, tok))
		if resp, out := ts.do(t, req); resp.StatusCode != 403 {
			t.Errorf("%s %s with a task token: %d %v, want 403", rt.method, rt.path, resp.StatusCode, out)
		}
	}
}
