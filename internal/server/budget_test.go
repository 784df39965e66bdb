package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// addItemsUpstream puts the upstream "items" (GET /v1/** with scope items:read) in the vault,
// with the real key of a local API.
func addItemsUpstream(t *testing.T, ts *testServer) *upstreamAPI {
	t.Helper()
	up := newUpstreamAPI(t)
	resp, out := ts.adminJSON(t, "POST", "/v1/upstreams", map[string]any{
		"name": "items", "base_url": up.srv.URL, "auth": "bearer", "allow_private": true,
		"routes": []map[string]any{{"scope": "items:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
	})
	if resp.StatusCode != 201 {
		t.Fatalf("add upstream: %d %v", resp.StatusCode, out)
	}
	resp, out = ts.adminJSON(t, "PUT", "/v1/upstreams/items/secrets/credential", map[string]string{"secret": up.key})
	if resp.StatusCode != 204 {
		t.Fatalf("set secret: %d %v", resp.StatusCode, out)
	}
	return up
}

// itemsGrant grants a the items upstream with budget (and sub-delegation one level down).
func itemsGrant(t *testing.T, ts *testServer, a *testAgent, budget map[string]int64) string {
	t.Helper()
	return ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"},
		"budget": budget, "allow_subdelegation": true, "max_depth": 2})
}

// startBudgetTask starts a task of a under grant token gt asking for budget (nil: none); it
// returns the exchange's status and the token.
func startBudgetTask(t *testing.T, ts *testServer, a *testAgent, gt string, budget map[string]int64) (int, string, map[string]any) {
	t.Helper()
	form := url.Values{"subject_token": {gt}, "subject_token_type": {tokenTypeJWT}}
	if budget != nil {
		b, _ := json.Marshal(budget)
		form.Set("budget", string(b))
	}
	resp, out := ts.exchange(t, a.Key, form)
	tok, _ := out["access_token"].(string)
	return resp.StatusCode, tok, out
}

// callBody is one proxied call by the holder of tok: its status and body.
func callBody(t *testing.T, ts *testServer, up *upstreamAPI, a *testAgent, tok string) (int, string) {
	t.Helper()
	f := &proxyFixture{ts: ts, up: up, agent: a, tok: tok, key: a.Key}
	resp := f.call(t, "/v1/items")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func grantUsed(t *testing.T, ts *testServer, id string) map[string]any {
	t.Helper()
	resp, out := ts.adminJSON(t, "GET", "/v1/grants/"+id, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("get grant: %d %v", resp.StatusCode, out)
	}
	used, _ := out["budget_used"].(map[string]any)
	return used
}

// TestProxyGrantBudgetAcrossTasks is the case: a grant's calls=2 is 2 calls in all, not
// 2 more for every new task. Three tasks call once each; the third call is refused with 429
// budget_exhausted, naming the grant, and never reaches the upstream.
func TestProxyGrantBudgetAcrossTasks(t *testing.T) {
	ts := newTestServer(t)
	up := addItemsUpstream(t, ts)
	a := ts.newAgent(t, "budget-tasks", true)
	g := itemsGrant(t, ts, a, map[string]int64{"calls": 2})
	gt := ts.grantToken(t, a, g)
	var statuses []int
	var last string
	for range 3 {
		s, tok, out := startBudgetTask(t, ts, a, gt, nil)
		if s != 200 {
			t.Fatalf("start task: %d %v", s, out)
		}
		s, last = callBody(t, ts, up, a, tok)
		statuses = append(statuses, s)
	}
	if fmt.Sprint(statuses) != "[200 200 429]" || up.calls.Load() != 2 {
		t.Fatalf("one call from each of three tasks: %v, upstream saw %d; want [200 200 429] and 2", statuses, up.calls.Load())
	}
	if !strings.Contains(last, "budget_exhausted") || !strings.Contains(last, "grant "+g+"'s budget of 2 calls through the proxy, shared by all its tasks") {
		t.Errorf("refusal: %s", last)
	}
	if got := fmt.Sprint(grantUsed(t, ts, g)); got != "map[calls:2]" {
		t.Errorf("budget_used = %s, want map[calls:2]", got)
	}
}

// TestProxyTaskCallsAndGrantTotal: task_calls is each task's own limit, calls the grant's total;
// a call refused by the task's own limit spends nothing of the grant's total.
func TestProxyTaskCallsAndGrantTotal(t *testing.T) {
	ts := newTestServer(t)
	up := addItemsUpstream(t, ts)
	a := ts.newAgent(t, "budget-each", true)
	g := itemsGrant(t, ts, a, map[string]int64{"calls": 3, "task_calls": 1})
	gt := ts.grantToken(t, a, g)

	if s, _, out := startBudgetTask(t, ts, a, gt, map[string]int64{"calls": 2}); s != 400 || out["error"] != "invalid_request" ||
		!strings.Contains(fmt.Sprint(out["error_description"]), `budget "calls" of 2 exceeds what the grant allows a task (its calls and task_calls) (1)`) {
		t.Errorf("a task asking for more than task_calls: %d %v", s, out)
	}
	_, first, _ := startBudgetTask(t, ts, a, gt, nil)
	if s, b := callBody(t, ts, up, a, first); s != 200 {
		t.Fatalf("first call: %d %s", s, b)
	}
	for range 3 {
		if s, b := callBody(t, ts, up, a, first); s != 429 || !strings.Contains(b, "the task's budget of 1 calls through the proxy is used up, the most the grant's task_calls (1) allows a task: ask the grant's owner for a new grant") {
			t.Fatalf("the task's second call: %d %s", s, b)
		}
	}
	if got := fmt.Sprint(grantUsed(t, ts, g)); got != "map[calls:1]" {
		t.Errorf("budget_used after refused calls = %s, want map[calls:1]: a refused call never counts", got)
	}
	var statuses []int
	for range 3 {
		_, tok, _ := startBudgetTask(t, ts, a, gt, nil)
		s, _ := callBody(t, ts, up, a, tok)
		statuses = append(statuses, s)
	}
	if fmt.Sprint(statuses) != "[200 200 429]" || up.calls.Load() != 3 {
		t.Errorf("three more tasks: %v, upstream saw %d; want [200 200 429] and 3", statuses, up.calls.Load())
	}
}

// TestBudgetKeysRefusedWhereTheyEnter: a budget key nothing enforces is refused by the API
// (400) and the token endpoint (invalid_request), with the keys that work.
func TestBudgetKeysRefusedWhereTheyEnter(t *testing.T) {
	ts := newTestServer(t)
	addItemsUpstream(t, ts)
	a := ts.newAgent(t, "budget-keys", true)
	spec := func(budget map[string]int64) map[string]any {
		return map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"}, "budget": budget}
	}
	grantKeys := "calls, calls:UPSTREAM, task_calls, task_calls:UPSTREAM, max_request_bytes"
	for _, tc := range []struct {
		budget map[string]int64
		want   string
	}{
		{map[string]int64{"requests": 500}, `budget "requests" is not a budget mandate knows: use ` + grantKeys},
		{map[string]int64{"calls:Items": 5}, `"Items" is not an upstream name`},
		{map[string]int64{"calls": -1}, `budget "calls" is -1: want a whole number >= 0 in plain digits`},
	} {
		resp, out := ts.adminJSON(t, "POST", "/v1/grants", spec(tc.budget))
		if resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), tc.want) {
			t.Errorf("POST /v1/grants budget %v: %d %v; want 400 with %q", tc.budget, resp.StatusCode, out, tc.want)
		}
	}
	resp, out := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", spec(map[string]int64{"requests": 5}))
	if resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), grantKeys) {
		t.Errorf("grant request with requests=5: %d %v", resp.StatusCode, out)
	}
	resp, out = ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", spec(map[string]int64{"calls": 10}))
	if resp.StatusCode != 201 {
		t.Fatalf("grant request: %d %v", resp.StatusCode, out)
	}
	resp, out = ts.adminJSON(t, "POST", "/v1/grant-requests/"+out["request_id"].(string)+"/approve", map[string]any{"budget": map[string]int64{"tokens": 1}})
	if resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `budget "tokens" is not a budget mandate knows`) {
		t.Errorf("approval narrowing to tokens=1: %d %v", resp.StatusCode, out)
	}

	gt := ts.grantToken(t, a, itemsGrant(t, ts, a, map[string]int64{"calls": 10, "task_calls": 5}))
	for _, tc := range []struct {
		budget map[string]int64
		want   string
	}{
		{map[string]int64{"requests": 5}, `budget "requests" is not a budget mandate knows: use calls, calls:UPSTREAM, max_request_bytes`},
		{map[string]int64{"task_calls": 1}, `budget "task_calls" is set on a grant, not a task: a task's own limit is calls`},
		{map[string]int64{"calls:": 1}, "is not an upstream name"},
		{map[string]int64{"calls": 6}, `budget "calls" of 6 exceeds what the grant allows a task (its calls and task_calls) (5)`},
	} {
		s, _, out := startBudgetTask(t, ts, a, gt, tc.budget)
		if s != 400 || out["error"] != "invalid_request" || !strings.Contains(fmt.Sprint(out["error_description"]), tc.want) {
			t.Errorf("task start with budget %v: %d %v; want invalid_request with %q", tc.budget, s, out, tc.want)
		}
	}
}

// TestProxyBudgetsHoldProperty states the promise of budgets through the real server and store:
// for random budgets on a grant, its tasks and their children, and random calls, a call
// succeeds exactly when every limit that applies to it has room (the grant's totals, the
// calling task's own and each ancestor's; each counting the calls made under it), so no limit is
// ever passed and a refused call spends nothing.
func TestProxyBudgetsHoldProperty(t *testing.T) {
	ts := newTestServer(t)
	up := addItemsUpstream(t, ts)
	orch := ts.newAgent(t, "prop-orch", true)
	helper := ts.newAgent(t, "prop-helper", true)
	// Each key set with probability 1/odds, to 0..3 (limits that run out within a dozen calls).
	randomBudget := func(r *rand.Rand, odds int, keys ...string) map[string]int64 {
		b := map[string]int64{}
		for _, k := range keys {
			if r.IntN(odds) == 0 {
				b[k] = int64(r.IntN(4))
			}
		}
		return b
	}
	type node struct {
		holder *testAgent
		tok    string
		id     string
		budget map[string]int64
		parent int // -1: started from the grant
	}
	seeds := 10
	if testing.Short() {
		seeds = 3
	}
	outcomes := map[int]int{}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		r := rand.New(rand.NewPCG(seed, 42))
		gb := randomBudget(r, 2, "calls", "calls:items", "task_calls", "task_calls:items")
		g := itemsGrant(t, ts, orch, gb)
		gt := ts.grantToken(t, orch, g)
		var nodes []node
		for range 1 + r.IntN(4) {
			s, tok, out := startBudgetTask(t, ts, orch, gt, randomBudget(r, 4, "calls", "calls:items"))
			if s == 400 && out["error"] == "invalid_request" {
				continue // asked for more than the grant gives each task
			}
			if s != 200 {
				t.Fatalf("seed %d: start task: %d %v", seed, s, out)
			}
			nodes = append(nodes, node{holder: orch, tok: tok, id: taskOf(t, tok), parent: -1})
			if r.IntN(2) == 0 {
				form := url.Values{"subject_token": {tok}, "subject_token_type": {tokenTypeAccess},
					"actor_token": {ts.actorToken(t, helper.Key, helper.DID, nil)}, "actor_token_type": {tokenTypeJWT}}
				if b := randomBudget(r, 3, "calls", "calls:items"); len(b) > 0 {
					raw, _ := json.Marshal(b)
					form.Set("budget", string(raw))
				}
				resp, out := ts.exchange(t, orch.Key, form)
				if resp.StatusCode == 200 {
					ctok := out["access_token"].(string)
					nodes = append(nodes, node{holder: helper, tok: ctok, id: taskOf(t, ctok), parent: len(nodes) - 1})
				} else if out["error"] != "invalid_request" {
					t.Fatalf("seed %d: delegate: %d %v", seed, resp.StatusCode, out)
				}
			}
		}
		for i := range nodes {
			resp, out := ts.adminJSON(t, "GET", "/v1/tasks/"+nodes[i].id, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("get task: %d %v", resp.StatusCode, out)
			}
			nodes[i].budget = map[string]int64{}
			for k, v := range asMap(out["budget"]) {
				nodes[i].budget[k] = int64(v.(float64))
			}
		}
		// The model: every limit that applies to a call by node i, as (owner, key) → max.
		used := map[string]int64{}
		limits := func(i int) map[string]int64 {
			out := map[string]int64{}
			for _, key := range []string{"calls", "calls:items"} {
				if v, ok := gb[key]; ok {
					out["grant "+key] = v
				}
				for j := i; j >= 0; j = nodes[j].parent {
					if v, ok := nodes[j].budget[key]; ok {
						out[nodes[j].id+" "+key] = v
					}
				}
			}
			return out
		}
		for n := 0; n < 15 && len(nodes) > 0; n++ {
			i := r.IntN(len(nodes))
			admit := true
			for k, max := range limits(i) {
				admit = admit && used[k] < max
			}
			status, body := callBody(t, ts, up, nodes[i].holder, nodes[i].tok)
			if want := map[bool]int{true: 200, false: 429}[admit]; status != want {
				t.Fatalf("seed %d, call %d by %s: %d %s; want %d (grant budget %v, limits %v, used %v)",
					seed, n, nodes[i].id, status, body, want, gb, limits(i), used)
			}
			outcomes[status]++
			if admit {
				for k := range limits(i) {
					used[k]++
				}
			}
		}
	}
	if outcomes[200] == 0 || outcomes[429] == 0 {
		t.Errorf("outcomes %v: the seeds should give both admitted and refused calls", outcomes)
	}
	t.Logf("calls: %v", outcomes)
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// TestProxyGrantBudgetAcrossReplicas: two replicas on one PostgreSQL database, five tasks of one
// grant, 40 concurrent calls spread over both: exactly the grant's 10 succeed.
func TestProxyGrantBudgetAcrossReplicas(t *testing.T) {
	dsn := pgtest.URL(t)
	a := newTestServer(t, func(c *config.Config) { c.Database = dsn })
	b := newTestServer(t, func(c *config.Config) { c.Database, c.DataDir, c.Issuer = dsn, a.DataDir, a.URL })
	up := addItemsUpstream(t, a)
	agent := a.newAgent(t, "budget-replicas", true)
	gt := a.grantToken(t, agent, itemsGrant(t, a, agent, map[string]int64{"calls": 10}))
	var toks []string
	for range 5 {
		_, tok, _ := startBudgetTask(t, a, agent, gt, nil)
		toks = append(toks, tok)
	}
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			u := a.URL + "/proxy/items/v1/items"
			req, _ := http.NewRequest("GET", u, nil)
			if i%2 == 1 { // the same public URL, served by replica B
				req.URL.Host = b.Addr
				req.Host = strings.TrimPrefix(a.URL, "http://")
			}
			tok := toks[i%len(toks)]
			p, err := dpop.NewProof(agent.Key, "GET", u, dpop.ProofOptions{AccessToken: tok, Now: a.Clock.Now()})
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Authorization", "DPoP "+tok)
			req.Header.Set("DPoP", p)
			resp, err := a.HC.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case 200:
				ok.Add(1)
			case 429:
				refused.Add(1)
			default:
				t.Errorf("replica %d: status %d", i%2, resp.StatusCode)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 10 || refused.Load() != 30 || up.calls.Load() != 10 {
		t.Fatalf("ok %d refused %d upstream saw %d; want 10, 30, 10", ok.Load(), refused.Load(), up.calls.Load())
	}
}

// TestBudgetInputAtEveryEntryPoint: a budget is read by one rule wherever it enters (grant
// create, grant request, approval, token exchange): a null or non-integer value, a key given
// twice and a key naming an upstream that does not exist are refused, naming the key; what is
// accepted is stored as written, as grant show displays it.
func TestBudgetInputAtEveryEntryPoint(t *testing.T) {
	ts := newTestServer(t)
	addItemsUpstream(t, ts)
	a := ts.newAgent(t, "budget-input", true)
	spec := func(budget string) json.RawMessage {
		return json.RawMessage(`{"agent":"` + a.ID + `","scopes":["items:read"],"resources":["` + ts.URL + `/proxy/items"],"budget":` + budget + `}`)
	}
	approveBody := func(budget string) json.RawMessage { return json.RawMessage(`{"budget":` + budget + `}`) }
	newRequest := func() string {
		resp, out := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", spec(`{"calls":10,"calls:items":10}`))
		if resp.StatusCode != 201 {
			t.Fatalf("grant request: %d %v", resp.StatusCode, out)
		}
		return out["request_id"].(string)
	}
	gt := ts.grantToken(t, a, itemsGrant(t, ts, a, map[string]int64{"calls": 10, "calls:items": 10}))
	exchange := func(budget string) (int, map[string]any) {
		resp, out := ts.exchange(t, a.Key, url.Values{"subject_token": {gt}, "subject_token_type": {tokenTypeJWT}, "budget": {budget}})
		return resp.StatusCode, out
	}
	for _, tc := range []struct{ budget, want string }{
		{`{"calls":null}`, `budget "calls" is null: want a whole number >= 0`},
		{`{"calls":"3"}`, `budget "calls" is a string`},
		{`{"calls":true}`, `budget "calls" is true`},
		{`{"calls":{}}`, `budget "calls" is an object`},
		{`{"calls":2.0}`, `budget "calls" is 2.0: want a whole number >= 0 in plain digits`},
		{`{"calls":1e2}`, `budget "calls" is 1e2`},
		{`{"calls":-0}`, `budget "calls" is -0`},
		{`{"calls":9223372036854775808}`, `budget "calls" is 9223372036854775808`},
		{`{"calls":3,"calls":1000}`, `budget "calls" is given twice`},
		{`{"calls":3,"\u0063alls":1000}`, `budget "calls" is given twice`},
		{`{"calls:nosuch":3}`, `budget "calls:nosuch" names upstream "nosuch", which does not exist: known upstreams are items`},
		{`[1]`, `budget must be a JSON object`},
	} {
		if resp, out := ts.adminJSON(t, "POST", "/v1/grants", spec(tc.budget)); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), tc.want) {
			t.Errorf("POST /v1/grants budget %s: %d %v; want 400 with %q", tc.budget, resp.StatusCode, out, tc.want)
		}
		if resp, out := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", spec(tc.budget)); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), tc.want) {
			t.Errorf("grant request budget %s: %d %v; want 400 with %q", tc.budget, resp.StatusCode, out, tc.want)
		}
		if resp, out := ts.adminJSON(t, "POST", "/v1/grant-requests/"+newRequest()+"/approve", approveBody(tc.budget)); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), tc.want) {
			t.Errorf("approval budget %s: %d %v; want 400 with %q", tc.budget, resp.StatusCode, out, tc.want)
		}
		if s, out := exchange(tc.budget); s != 400 || out["error"] != "invalid_request" || !strings.Contains(fmt.Sprint(out["error_description"]), tc.want) {
			t.Errorf("token exchange budget %s: %d %v; want invalid_request with %q", tc.budget, s, out, tc.want)
		}
	}
	for _, key := range []string{"task_calls:ubaer"} { // a grant key, refused at the API only
		resp, out := ts.adminJSON(t, "POST", "/v1/grants", spec(`{"`+key+`":1}`))
		if resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `names upstream "ubaer", which does not exist`) {
			t.Errorf("POST /v1/grants %s: %d %v", key, resp.StatusCode, out)
		}
	}
	// A budget member given twice in the body: encoding/json would keep the second.
	twice := json.RawMessage(`{"agent":"` + a.ID + `","scopes":["items:read"],"resources":["` + ts.URL + `/proxy/items"],"budget":{"calls":3},"budget":{"calls":1000}}`)
	if resp, out := ts.adminJSON(t, "POST", "/v1/grants", twice); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `gives "budget" twice`) {
		t.Errorf("POST /v1/grants with budget twice: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.agentCall(t, a, "POST", "/v1/agent/grant-requests", twice); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `gives "budget" twice`) {
		t.Errorf("grant request with budget twice: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/grant-requests/"+newRequest()+"/approve", json.RawMessage(`{"budget":{"calls":3},"budget":{"calls":1000}}`)); resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `gives "budget" twice`) {
		t.Errorf("approval with budget twice: %d %v", resp.StatusCode, out)
	}
	resp, out := ts.adminJSON(t, "POST", "/v1/grant-requests/"+newRequest()+"/approve", approveBody(`{"calls":11}`))
	if resp.StatusCode != 400 || !strings.Contains(fmt.Sprint(out), `budget "calls" of 11 exceeds the request's budget (10)`) {
		t.Errorf("approval over the request: %d %v", resp.StatusCode, out)
	}

	// Accepted: the same text means the same at every entry point, and is what grant show says.
	const ok = `{"calls":0,"calls:items":7}`
	want := "map[calls:0 calls:items:7]"
	resp, out = ts.adminJSON(t, "POST", "/v1/grants", spec(ok))
	if resp.StatusCode != 201 || fmt.Sprint(out["budget"]) != want {
		t.Errorf("POST /v1/grants %s: %d %v; want budget %s", ok, resp.StatusCode, out, want)
	}
	resp, out = ts.adminJSON(t, "POST", "/v1/grant-requests/"+newRequest()+"/approve", approveBody(ok))
	if resp.StatusCode != 201 || fmt.Sprint(out["budget"]) != want {
		t.Errorf("approval %s: %d %v; want budget %s", ok, resp.StatusCode, out, want)
	}
	if s, out := exchange(ok); s != 200 {
		t.Errorf("token exchange %s: %d %v", ok, s, out)
	}
}
