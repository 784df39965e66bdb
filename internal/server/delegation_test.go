package server_test

import (
	"strings"

	"net/http"
	"net/url"
	"testing"

	"github.com/mandate-dev/mandate/internal/audit"

	"github.com/mandate-dev/mandate/dpop"
)

// chain is the three-level delegation of the acceptance test: the admin grants @orchestrator;
// it starts a task on an instance key; it hands a narrower task to @researcher.
type chain struct {
	ts                *testServer
	rs                *resourceServer
	orch, res         *testAgent
	grantID, grantTok string
	instance          *testAgent // the orchestrator's ephemeral instance key
	taskTok           string     // the orchestrator's task token (bound to the instance key)
	childTok          string     // the researcher's token
}

func newChain(t *testing.T) *chain {
	t.Helper()
	ts := newTestServer(t)
	c := &chain{ts: ts, rs: newResourceServer(t, ts)}
	c.orch = ts.newAgent(t, "orchestrator", true)
	c.res = ts.newAgent(t, "researcher", true)
	c.grantID = ts.grant(t, map[string]any{
		"agent": "@orchestrator", "scopes": []string{"repo:read", "repo:write", "issues:read"},
		"resources":             []string{c.rs.URL, "https://other.example/"},
		"authorization_details": []any{map[string]any{"type": "repo", "repos": []string{"acme/*"}, "actions": []string{"read", "write"}}},
		"max_task_ttl":          3600, "max_depth": 2, "allow_subdelegation": true,
	})
	c.grantTok = ts.grantToken(t, c.orch, c.grantID)
	ik, idid := newKey(t)
	c.instance = &testAgent{Key: ik, DID: idid}

	resp, out := ts.exchange(t, c.orch.Key, url.Values{
		"subject_token": {c.grantTok}, "subject_token_type": {tokenTypeJWT},
		"actor_token": {ts.actorToken(t, ik, idid, nil)}, "actor_token_type": {tokenTypeJWT},
		"purpose": {"triage the backlog"},
	})
	if resp.StatusCode != 200 {
		t.Fatalf("start task: %d %v", resp.StatusCode, out)
	}
	c.taskTok = out["access_token"].(string)
	if out["issued_token_type"] != tokenTypeAccess || out["token_type"] != "DPoP" || out["txn"] != taskOf(t, c.taskTok) || out["task_expires_at"] == nil {
		t.Errorf("exchange response: %v", out)
	}

	resp, out = ts.exchange(t, ik, url.Values{
		"subject_token": {c.taskTok}, "subject_token_type": {tokenTypeAccess},
		"actor_token": {ts.actorToken(t, c.res.Key, c.res.DID, nil)}, "actor_token_type": {tokenTypeJWT},
		"scope": {"repo:read"}, "resource": {c.rs.URL}, "purpose": {"read the issues"},
		"authorization_details": {`[{"type":"repo","repos":["acme/web"],"actions":["read"]}]`},
	})
	if resp.StatusCode != 200 {
		t.Fatalf("sub-delegate: %d %v", resp.StatusCode, out)
	}
	c.childTok = out["access_token"].(string)
	return c
}

// TestDelegationChain: the resource sees the principal, the ordered chain with handles and DIDs,
// both task ids, and the narrowed scope.
func TestDelegationChain(t *testing.T) {
	c := newChain(t)
	ts := c.ts
	resp, who := c.rs.call(t, ts, c.res.Key, c.childTok)
	if resp.StatusCode != 200 {
		t.Fatalf("researcher at the resource: %d %v (denials %v)", resp.StatusCode, who, c.rs.deny)
	}
	admin := ts.adminUserID(t)
	if who["Principal"] != admin || who["AgentID"] != c.res.ID {
		t.Errorf("principal %v agent %v, want %s %s", who["Principal"], who["AgentID"], admin, c.res.ID)
	}
	chain := who["Chain"].([]any)
	if len(chain) != 2 {
		t.Fatalf("chain %v, want orchestrator then researcher", chain)
	}
	first, second := chain[0].(map[string]any), chain[1].(map[string]any)
	ijkt, _ := dpop.Thumbprint(c.instance.Key.Public())
	if first["AgentID"] != c.orch.ID || first["Handle"] != "orchestrator" || first["DID"] != c.orch.DID || first["InstanceJKT"] != ijkt {
		t.Errorf("first actor %v", first)
	}
	if second["AgentID"] != c.res.ID || second["Handle"] != "researcher" || second["DID"] != c.res.DID {
		t.Errorf("second actor %v", second)
	}
	if first["Task"] == "" || second["Task"] == "" || first["Task"] == second["Task"] || who["Task"] != second["Task"] {
		t.Errorf("tasks %v / %v / %v", first["Task"], second["Task"], who["Task"])
	}
	if s := who["Scopes"].([]any); len(s) != 1 || s[0] != "repo:read" {
		t.Errorf("scopes %v, want the narrowed repo:read", s)
	}
	if who["Grant"] != c.grantID {
		t.Errorf("grant %v, want %s", who["Grant"], c.grantID)
	}
	// Each hop is in the audit trail as a token.exchange naming its grant and task (in the
	// structured fields; TestExchangeEventsCarryTheAnswer checks every one).
	evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Action: "token.exchange"})
	if err != nil || len(evs) != 2 {
		t.Fatalf("token.exchange events: %d, %v", len(evs), err)
	}
	for _, ev := range evs {
		if ev.Outcome != audit.OutcomeSuccess || ev.PrincipalID != admin || ev.TokenID == "" || ev.GrantID != c.grantID || !strings.HasPrefix(ev.TaskID, "tsk_") || ev.Detail == "" {
			t.Errorf("exchange event %+v", ev)
		}
	}
	// The orchestrator's own task token works at the resource too, on its instance key only.
	if resp, out := c.rs.call(t, ts, c.instance.Key, c.taskTok); resp.StatusCode != 200 {
		t.Errorf("orchestrator task token: %d %v", resp.StatusCode, out)
	}
	if resp, _ := c.rs.call(t, ts, c.orch.Key, c.taskTok); resp.StatusCode != 401 {
		t.Errorf("task token with the agent's long-term key instead of the instance key: %d, want 401", resp.StatusCode)
	}
}

func (ts *testServer) adminUserID(t *testing.T) string {
	resp, out := ts.adminJSON(t, "GET", "/v1/whoami", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatal(out)
	}
	return out["id"].(string)
}
