package server_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/proxy"
)

// principalFixture is a person (not an admin) with agents of their own: what they see of the
// trail is what the audit API shows them.
type principalFixture struct {
	ts       *testServer
	apiToken string
	id       string
}

func newPrincipal(t *testing.T, ts *testServer, name string) *principalFixture {
	t.Helper()
	p := &principalFixture{ts: ts, apiToken: ts.userToken(t, name)}
	resp, out := p.call(t, "GET", "/v1/whoami", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami: %d %v", resp.StatusCode, out)
	}
	p.id = out["id"].(string)
	return p
}

func (p *principalFixture) call(t testing.TB, method, path string, body any) (*http.Response, map[string]any) {
	t.Helper()
	return p.ts.bearerJSON(t, p.apiToken, method, path, body)
}

// agent registers an agent the principal claims.
func (p *principalFixture) agent(t *testing.T, handle string) *testAgent {
	t.Helper()
	a := p.ts.newAgent(t, handle, false)
	if resp, out := p.ts.claim(t, p.apiToken, a.Code); resp.StatusCode != http.StatusOK {
		t.Fatalf("claim: %d %v", resp.StatusCode, out)
	}
	return a
}

func (p *principalFixture) grant(t *testing.T, body map[string]any) string {
	t.Helper()
	resp, out := p.call(t, "POST", "/v1/grants", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create grant: %d %v", resp.StatusCode, out)
	}
	return out["grant_id"].(string)
}

// report is the principal's own audit report through the API (GET /v1/audit?principal=).
func (p *principalFixture) report(t *testing.T) []map[string]any {
	t.Helper()
	resp, out := p.call(t, "GET", "/v1/audit?limit=1000&principal="+p.id, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/audit: %d %v", resp.StatusCode, out)
	}
	var evs []map[string]any
	for _, e := range out["events"].([]any) {
		evs = append(evs, e.(map[string]any))
	}
	return evs
}

// events lists the principal's events in the store, oldest first.
func (p *principalFixture) events(t *testing.T, f audit.Filter) []audit.Event {
	t.Helper()
	f.PrincipalID, f.Ascending, f.Limit = p.id, true, 10000
	evs, err := p.ts.Srv.Store().ListEvents(t.Context(), f)
	if err != nil {
		t.Fatalf("ListEvents: %v", err)
	}
	return evs
}

func inReport(report []map[string]any, id string) bool {
	return slices.ContainsFunc(report, func(e map[string]any) bool { return e["id"] == id })
}

// delegate hands the task of subjectTok (held by holder) to next and returns next's token.
func (ts *testServer) delegate(t *testing.T, holder, next *testAgent, subjectTok, purpose string) string {
	t.Helper()
	resp, out := ts.exchange(t, holder.Key, url.Values{
		"subject_token": {subjectTok}, "subject_token_type": {tokenTypeAccess},
		"actor_token": {ts.actorToken(t, next.Key, next.DID, nil)}, "actor_token_type": {tokenTypeJWT},
		"purpose": {purpose},
	})
	if resp.StatusCode != 200 {
		t.Fatalf("delegate to @%s: %d %v", next.Handle, resp.StatusCode, out)
	}
	return out["access_token"].(string)
}

// whoami calls the server's own agent resource with tok, bound to key.
func (ts *testServer) whoami(t *testing.T, a *testAgent, tok string) *http.Response {
	t.Helper()
	resp, _ := ts.callResource(t, "DPoP "+tok, ts.proof(t, a.Key, "GET", ts.URL+"/v1/agent/whoami", tok))
	return resp
}

// TestRevokedTaskRefusalsInPrincipalReport (acceptance 5): once a task is revoked, its agent's
// next calls are refused — and each refusal, of a token whose signature verified, is the
// agent's, on the principal's behalf, with the task, grant, chain, key and token named: it is in
// the principal's report, in the store and through the audit API.
func TestRevokedTaskRefusalsInPrincipalReport(t *testing.T) {
	ts := newTestServer(t)
	carol := newPrincipal(t, ts, "carol")
	bot := carol.agent(t, "carols-bot")
	g := carol.grant(t, map[string]any{"agent": bot.ID, "scopes": []string{"read"}, "resources": []string{ts.URL + "/"}})
	tok := ts.startTask(t, bot, ts.grantToken(t, bot, g))
	task := taskOf(t, tok)
	if resp := ts.whoami(t, bot, tok); resp.StatusCode != 200 {
		t.Fatalf("before the revocation: %d", resp.StatusCode)
	}
	if resp, out := carol.call(t, "POST", "/v1/tasks/"+task+"/revoke", nil); resp.StatusCode != 200 {
		t.Fatalf("revoke the task: %d %v", resp.StatusCode, out)
	}
	for range 2 {
		if resp := ts.whoami(t, bot, tok); resp.StatusCode != 401 {
			t.Fatalf("after the revocation: %d, want 401", resp.StatusCode)
		}
	}
	resp, out := ts.exchange(t, bot.Key, url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeAccess}})
	if resp.StatusCode != 400 || out["error"] != "invalid_grant" {
		t.Fatalf("refresh of the revoked task's token: %d %v", resp.StatusCode, out)
	}

	jkt, _ := dpop.Thumbprint(bot.Key.Public())
	jti := jtiOf(t, tok)
	wantLink := []audit.Link{{AgentID: bot.ID, Handle: bot.Handle, DID: bot.DID, TaskID: task}}
	report := carol.report(t)
	refusals := map[string]int{}
	for _, ev := range carol.events(t, audit.Filter{Outcome: audit.OutcomeDenied}) {
		refusals[ev.Action+" "+ev.Reason]++
		got := []string{ev.ActorType, ev.ActorID, ev.ActorHandle, ev.AgentID, ev.AgentDID, ev.KeyJKT, ev.TaskID, ev.GrantID, ev.TokenID}
		want := []string{audit.ActorAgent, bot.ID, bot.Handle, bot.ID, bot.DID, jkt, task, g, jti}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s %s: who, whose task and token (-want +got):\n%s", ev.Action, ev.Reason, diff)
		}
		if diff := cmp.Diff(wantLink, ev.Chain); diff != "" {
			t.Errorf("%s %s: chain (-want +got):\n%s", ev.Action, ev.Reason, diff)
		}
		if !slices.Equal(ev.Scopes, []string{"read"}) || len(ev.Resources) != 1 {
			t.Errorf("%s %s: scopes %v resources %v", ev.Action, ev.Reason, ev.Scopes, ev.Resources)
		}
		if !inReport(report, ev.ID) {
			t.Errorf("%s %s (%s) is not in the principal's report", ev.Action, ev.Reason, ev.ID)
		}
	}
	if want := map[string]int{"resource.deny revoked": 2, "token.deny task_ended": 1}; !cmp.Equal(want, refusals) {
		t.Errorf("refusals in the principal's trail %v, want %v", refusals, want)
	}
}

// TestCascadeEventsThreeLevels: a chain three agents deep (@a starts a task, hands it to @b, who
// hands it to @c). Whatever ends it — the top task revoked, the grant revoked, the middle agent
// revoked — every task the cascade reaches has its own event naming the cause, in the
// principal's report.
func TestCascadeEventsThreeLevels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(t *testing.T, p *principalFixture, g string, tasks []string, agents []*testAgent) string // returns the cause
		reason string
		ended  []int // the tasks the cascade ends (by depth - 1)
		works  []int // the tasks still working after
	}{
		{"top task revoked", func(t *testing.T, p *principalFixture, g string, tasks []string, agents []*testAgent) string {
			p.call(t, "POST", "/v1/tasks/"+tasks[0]+"/revoke", nil)
			return tasks[0]
		}, delegation.ReasonCascadeTask, []int{1, 2}, nil},
		{"grant revoked", func(t *testing.T, p *principalFixture, g string, tasks []string, agents []*testAgent) string {
			p.call(t, "POST", "/v1/grants/"+g+"/revoke", nil)
			return g
		}, delegation.ReasonCascadeGrant, []int{0, 1, 2}, nil},
		{"middle agent revoked", func(t *testing.T, p *principalFixture, g string, tasks []string, agents []*testAgent) string {
			p.call(t, "POST", "/v1/agents/"+agents[1].ID+"/revoke", nil)
			return agents[1].ID
		}, delegation.ReasonCascadeAgent, []int{1, 2}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t)
			dora := newPrincipal(t, ts, "dora")
			agents := []*testAgent{dora.agent(t, "agent-a"), dora.agent(t, "agent-b"), dora.agent(t, "agent-c")}
			g := dora.grant(t, map[string]any{"agent": agents[0].ID, "scopes": []string{"read"}, "resources": []string{ts.URL + "/"},
				"max_depth": 3, "allow_subdelegation": true})
			toks := []string{ts.startTask(t, agents[0], ts.grantToken(t, agents[0], g))}
			toks = append(toks, ts.delegate(t, agents[0], agents[1], toks[0], "read the backlog"))
			toks = append(toks, ts.delegate(t, agents[1], agents[2], toks[1], "summarise it"))
			var tasks []string
			for _, tok := range toks {
				tasks = append(tasks, taskOf(t, tok))
			}
			before := dora.events(t, audit.Filter{})
			cause := tc.revoke(t, dora, g, tasks, agents)
			for i, tok := range toks {
				want := http.StatusUnauthorized
				if slices.Contains(tc.works, i) {
					want = http.StatusOK
				}
				if resp := ts.whoami(t, agents[i], tok); resp.StatusCode != want {
					t.Errorf("task %d at the resource: %d, want %d", i+1, resp.StatusCode, want)
				}
			}

			report := dora.report(t)
			got := map[string]audit.Event{}
			for _, ev := range dora.events(t, audit.Filter{})[len(before):] {
				if ev.Cause == "" || ev.Outcome != audit.OutcomeSuccess {
					continue
				}
				if _, dup := got[ev.TaskID]; dup {
					t.Errorf("two cascade events for task %s", ev.TaskID)
				}
				got[ev.TaskID] = ev
				if !inReport(report, ev.ID) {
					t.Errorf("the cascade event of %s is not in the principal's report", ev.TaskID)
				}
			}
			if len(got) != len(tc.ended) {
				t.Errorf("%d cascade events, want %d: %v", len(got), len(tc.ended), got)
			}
			for _, i := range tc.ended {
				ev, ok := got[tasks[i]]
				if !ok {
					t.Errorf("no cascade event for task %d (%s)", i+1, tasks[i])
					continue
				}
				if ev.Action != delegation.ActionTaskRevoke || ev.Cause != cause || ev.Reason != tc.reason ||
					ev.AgentID != agents[i].ID || ev.GrantID != g || ev.PrincipalID != dora.id {
					t.Errorf("cascade event of task %d: %+v, want task.revoke caused by %s (%s)", i+1, ev, cause, tc.reason)
				}
				if i > 0 && ev.ParentTaskID != tasks[i-1] {
					t.Errorf("cascade event of task %d: parent %q, want %s", i+1, ev.ParentTaskID, tasks[i-1])
				}
			}
		})
	}
}

// TestExchangeEventsCarryTheAnswer: each hop of the chain is recorded with who acted, for whom,
// under which grant and task, with the chain, key, instance key, scopes and token id; each new
// task has a task.start event with its purpose and terms, and the grant its grant.create terms:
// the trail alone says what authority each held.
func TestExchangeEventsCarryTheAnswer(t *testing.T) {
	c := newChain(t)
	ts := c.ts
	admin := ts.adminUserID(t)
	store := ts.Srv.Store()
	list := func(action string) []audit.Event {
		evs, err := store.ListEvents(t.Context(), audit.Filter{Action: action, Ascending: true})
		if err != nil {
			t.Fatal(err)
		}
		return evs
	}
	ijkt, _ := dpop.Thumbprint(c.instance.Key.Public())
	rjkt, _ := dpop.Thumbprint(c.res.Key.Public())
	top, child := taskOf(t, c.taskTok), taskOf(t, c.childTok)
	orchLink := audit.Link{AgentID: c.orch.ID, Handle: "orchestrator", DID: c.orch.DID, InstanceKey: ijkt, TaskID: top}
	resLink := audit.Link{AgentID: c.res.ID, Handle: "researcher", DID: c.res.DID, TaskID: child}

	x := list(delegation.ActionTokenExchange)
	if len(x) != 2 {
		t.Fatalf("%d token.exchange events, want 2", len(x))
	}
	type who struct {
		ActorID, ActorHandle, PrincipalID, AgentID, AgentDID, KeyJKT, InstanceKey, TaskID, ParentTaskID, GrantID, TokenID string
		Chain                                                                                                             []audit.Link
	}
	for i, want := range []who{
		{c.orch.ID, "orchestrator", admin, c.orch.ID, c.orch.DID, ijkt, ijkt, top, "", c.grantID, jtiOf(t, c.taskTok), []audit.Link{orchLink}},
		{c.orch.ID, "orchestrator", admin, c.res.ID, c.res.DID, rjkt, "", child, top, c.grantID, jtiOf(t, c.childTok), []audit.Link{orchLink, resLink}},
	} {
		ev := x[i]
		got := who{ev.ActorID, ev.ActorHandle, ev.PrincipalID, ev.AgentID, ev.AgentDID, ev.KeyJKT, ev.InstanceKey, ev.TaskID,
			ev.ParentTaskID, ev.GrantID, ev.TokenID, ev.Chain}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("hop %d (-want +got):\n%s", i+1, diff)
		}
		if ev.Detail == "" || strings.Contains(ev.Detail, "jkt=") {
			t.Errorf("hop %d detail %q: want a sentence", i+1, ev.Detail)
		}
	}
	if !slices.Equal(x[1].Scopes, []string{"repo:read"}) || !slices.Equal(x[1].Resources, []string{c.rs.URL}) {
		t.Errorf("hop 2 scopes %v resources %v", x[1].Scopes, x[1].Resources)
	}

	starts := list(delegation.ActionTaskStart)
	if len(starts) != 2 {
		t.Fatalf("%d task.start events, want 2", len(starts))
	}
	for i, want := range []struct{ task, purpose string }{{top, "triage the backlog"}, {child, "read the issues"}} {
		ev := starts[i]
		var terms delegation.TaskTerms
		if err := json.Unmarshal(ev.Terms, &terms); err != nil {
			t.Fatalf("task.start terms %s: %v", ev.Terms, err)
		}
		stored, err := store.GetTask(t.Context(), want.task)
		if err != nil {
			t.Fatal(err)
		}
		// The trail keeps terms in canonical JSON (sorted keys): compare the details' values.
		asValue := cmp.Transformer("json", func(r json.RawMessage) any {
			var v any
			if err := json.Unmarshal(r, &v); err != nil {
				return string(r)
			}
			return v
		})
		if diff := cmp.Diff(stored.Terms(), terms, asValue); diff != "" {
			t.Errorf("task.start %d terms (-stored +trail):\n%s", i+1, diff)
		}
		if ev.TaskID != want.task || ev.Purpose != want.purpose || ev.RequestID != x[i].RequestID || ev.Seq+1 != x[i].Seq {
			t.Errorf("task.start %d: task %s purpose %q request %s seq %d; want %s %q, just before the exchange %s (%d)",
				i+1, ev.TaskID, ev.Purpose, ev.RequestID, ev.Seq, want.task, want.purpose, x[i].RequestID, x[i].Seq)
		}
	}
	if terms := starts[1].Terms; !strings.Contains(string(terms), `"parent_task_id":"`+top+`"`) || !strings.Contains(string(terms), `"depth":2`) {
		t.Errorf("the child task's terms %s name no parent or depth", terms)
	}

	gc := list(delegation.ActionGrantCreate)
	if len(gc) != 1 {
		t.Fatalf("%d grant.create events, want 1", len(gc))
	}
	var gt delegation.GrantTerms
	if err := json.Unmarshal(gc[0].Terms, &gt); err != nil {
		t.Fatalf("grant.create terms %s: %v", gc[0].Terms, err)
	}
	stored, err := store.GetGrant(t.Context(), c.grantID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored.Terms(admin), gt); diff != "" {
		t.Errorf("grant.create terms (-stored +trail):\n%s", diff)
	}
	if gc[0].ActorID != admin || gt.GrantedBy != admin || gt.MaxDepth != 2 || !gt.AllowSubdelegation || len(gt.AuthorizationDetails) != 1 {
		t.Errorf("grant.create: actor %s terms %+v", gc[0].ActorID, gt)
	}
}

// TestStolenTokenPresentationRefusalsInPrincipalReport: a valid task token presented wrongly —
// as Bearer, without a DPoP proof, with two, under a malformed scheme (DPoP and a tab), as a
// thief without the key would — is refused at the proxy (/proxy/items/…) and at the server's own
// agent resource (/v1/agent/whoami) in the token's agent's name, on its principal's behalf, with
// its task: the refusals are in the principal's trail and report. The same request with a forged
// token stays anonymous and out of the principal's trail.
func TestStolenTokenPresentationRefusalsInPrincipalReport(t *testing.T) {
	ts := newTestServer(t)
	addItemsUpstream(t, ts)
	erin := newPrincipal(t, ts, "erin")
	bot := erin.agent(t, "erins-bot")
	g := erin.grant(t, map[string]any{"agent": bot.ID, "scopes": []string{"items:read"},
		"resources": []string{ts.URL + "/proxy/items", ts.URL + "/"}})
	tok := ts.startTask(t, bot, ts.grantToken(t, bot, g))
	task := taskOf(t, tok)
	parts := strings.Split(tok, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
	jkt, _ := dpop.Thumbprint(bot.Key.Public())

	targets := map[string]struct {
		url, action, prefix string
	}{
		"proxy":  {ts.URL + "/proxy/items/v1/items/1", proxy.ActionCall, "token_"},
		"whoami": {ts.URL + "/v1/agent/whoami", audit.ActionResourceDeny, ""},
	}
	presentations := map[string]struct {
		reason string
		set    func(req *http.Request, tok, proof string)
	}{
		"bearer": {"bearer", func(req *http.Request, tok, proof string) {
			req.Header.Set("Authorization", "Bearer "+tok)
		}},
		"no proof": {"missing_proof", func(req *http.Request, tok, proof string) {
			req.Header.Set("Authorization", "DPoP "+tok)
		}},
		"two proofs": {"multiple_proofs", func(req *http.Request, tok, proof string) {
			req.Header.Set("Authorization", "DPoP "+tok)
			req.Header.Add("DPoP", proof)
			req.Header.Add("DPoP", proof)
		}},
		"scheme with a tab": {"scheme", func(req *http.Request, tok, proof string) {
			req.Header.Set("Authorization", "DPoP\t"+tok)
			req.Header.Set("DPoP", proof)
		}},
	}
	// send sends tok presented as pres to target; it returns the body and the refusal's event.
	send := func(t *testing.T, target, pres, tok string) (map[string]any, audit.Event) {
		t.Helper()
		tg, p := targets[target], presentations[pres]
		req, _ := http.NewRequest("GET", tg.url, nil)
		p.set(req, tok, ts.proof(t, bot.Key, "GET", tg.url, tok))
		resp, body := ts.do(t, req)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d %v, want 401", resp.StatusCode, body)
		}
		id := resp.Header.Get("X-Request-Id")
		var evs []audit.Event
		var err error
		// The proxy records a refusal after it answered: wait for it.
		for i := 0; len(evs) == 0 && i < 100; i++ {
			if i > 0 {
				time.Sleep(20 * time.Millisecond)
			}
			if evs, err = ts.Srv.Store().ListEvents(t.Context(), audit.Filter{RequestID: id}); err != nil {
				t.Fatal(err)
			}
		}
		if len(evs) != 1 {
			t.Fatalf("%d events of request %s, want 1: %+v", len(evs), id, evs)
		}
		if ev := evs[0]; ev.Action != tg.action || ev.Reason != tg.prefix+p.reason || ev.Outcome != audit.OutcomeDenied {
			t.Fatalf("event %s %s %s, want %s %s denied", ev.Action, ev.Reason, ev.Outcome, tg.action, tg.prefix+p.reason)
		}
		return body, evs[0]
	}

	var attributed []string
	for target := range targets {
		for pres := range presentations {
			t.Run(target+"/"+pres, func(t *testing.T) {
				body, ev := send(t, target, pres, tok)
				got := []string{ev.ActorType, ev.ActorID, ev.AgentID, ev.PrincipalID, ev.TaskID, ev.GrantID, ev.KeyJKT, ev.TokenID}
				want := []string{audit.ActorAgent, bot.ID, bot.ID, erin.id, task, g, jkt, jtiOf(t, tok)}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("who, whose task and token (-want +got):\n%s", diff)
				}
				attributed = append(attributed, ev.ID)

				// A forged token: the same answer, and nobody's.
				fbody, fev := send(t, target, pres, forged)
				if fev.ActorType != audit.ActorAnonymous || fev.AgentID != "" || fev.PrincipalID != "" || fev.TaskID != "" {
					t.Errorf("a forged token's refusal is attributed: %+v", fev)
				}
				delete(body, "request_id")
				delete(fbody, "request_id")
				if diff := cmp.Diff(fbody, body); diff != "" {
					t.Errorf("a valid token is answered differently from a forged one (-forged +valid):\n%s", diff)
				}
			})
		}
	}

	// In the principal's trail (ListEvents by principal) and report (the audit API), and nothing
	// else refused there: the forged tokens' refusals are not hers.
	mine := erin.events(t, audit.Filter{Outcome: audit.OutcomeDenied})
	var ids []string
	for _, ev := range mine {
		ids = append(ids, ev.ID)
	}
	slices.Sort(ids)
	slices.Sort(attributed)
	if diff := cmp.Diff(attributed, ids); diff != "" {
		t.Errorf("the principal's refusals (-attributed +ListEvents):\n%s", diff)
	}
	report := erin.report(t)
	for _, id := range attributed {
		if !inReport(report, id) {
			t.Errorf("refusal %s is not in the principal's report", id)
		}
	}
}
