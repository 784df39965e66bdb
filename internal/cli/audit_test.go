package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/audit/audittest"
	"github.com/mandate-dev/mandate/internal/server"
)

// TestAuditShowsAggregatedDenials: mandate audit shows an anonymous refusal's address as its
// actor, and an aggregated event as "denied xN".
func TestAuditShowsAggregatedDenials(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	for range 100 {
		resp, err := http.PostForm(ts.URL+"/oauth/token", url.Values{"grant_type": {"client_credentials"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	ts.Srv.FlushDenials(t.Context())
	// 30 one by one (the default --denial-audit-rate burst), then one event counting the other 70.
	hasAll(t, ok(t, "audit", "--action", "token.deny"), "dpop_missing", "127.0.0.1", "denied x70")
}

// incidentServer is a server whose trail holds audittest's incident, with real agents (owned by
// alice, a non-admin) so handles resolve; the CLI acts as alice.
type incidentServer struct {
	*testServer
	x          *audittest.Incident
	aliceToken string
}

func newIncidentServer(t *testing.T, requestIDs ...string) *incidentServer {
	t.Helper()
	ts := newTestServer(t)
	t.Setenv(envServer, ts.URL)
	t.Setenv(envToken, ts.AdminToken)
	var alice api.UserJSON
	decodeJSON(t, ok(t, "users", "create", "alice", "--json"), &alice)
	var tok api.TokenJSON
	decodeJSON(t, ok(t, "tokens", "create", "--user", "alice", "--json"), &tok)
	t.Setenv(envToken, tok.Token)
	var agents [3]audittest.Agent
	for i, h := range []string{"planner", "researcher", "fetcher"} {
		newAgent(t, ts, h)
		a, err := ts.Srv.Store().GetAgent(t.Context(), "@"+h)
		if err != nil {
			t.Fatal(err)
		}
		agents[i] = audittest.Agent{ID: a.ID, Handle: a.Handle, DID: a.Keys[0].DID, JKT: a.Keys[0].JKT}
	}
	x := audittest.NewIncident(audittest.Options{Now: time.Now(), Principal: alice.ID, Agents: agents, RequestIDs: requestIDs})
	for _, e := range x.Events {
		if err := ts.Srv.Store().AppendEvent(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	return &incidentServer{testServer: ts, x: x, aliceToken: tok.Token}
}

// count is how many of the incident's events keep selects.
func (s *incidentServer) count(keep func(audit.Event) bool) int {
	n := 0
	for _, e := range s.x.Events {
		if keep(e) {
			n++
		}
	}
	return n
}

// TestAuditQueriesThroughTheCLI: the filters of mandate audit, through the real API and store,
// select exactly the events that carry them, in every format; typos are errors that say what to
// write.
func TestAuditQueriesThroughTheCLI(t *testing.T) {
	s := newIncidentServer(t)
	x := s.x
	lines := func(out string) []string { return strings.Split(strings.TrimSpace(out), "\n") }

	// --task, as JSON lines: exactly the task's events.
	out := ok(t, "audit", "--task", x.Tasks[2], "--format", "jsonl")
	want := s.count(func(e audit.Event) bool { return e.TaskID == x.Tasks[2] })
	got := lines(out)
	if len(got) != want {
		t.Fatalf("audit --task: %d events, want %d\n%s", len(got), want, out)
	}
	for _, l := range got {
		var e audit.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.TaskID != x.Tasks[2] || e.Hash == "" || e.Seq == 0 {
			t.Fatalf("a line of --format jsonl: %v %+v", err, e)
		}
	}

	// --agent @handle resolves; refusals show their reasons and the actor's handle.
	out = ok(t, "audit", "--agent", "@fetcher", "--outcome", "denied")
	hasAll(t, out, "route_not_allowed", "task_revoked", "@fetcher", "ahrefs POST /v3/management/projects", x.Tasks[2])
	if n := len(lines(out)) - 1; n != 2 {
		t.Errorf("audit --agent @fetcher --outcome denied: %d rows, want 2\n%s", n, out)
	}
	hasAll(t, ok(t, "audit", "--upstream", "ahrefs", "--outcome", "success"), "ahrefs GET /v3/site-explorer/domain-rating -> 200")

	// --grant, paged: --limit 3 says there is more; --all reads every page; --json is json.
	var page api.AuditPage
	decodeJSON(t, ok(t, "audit", "--grant", x.Grant, "--limit", "3", "--format", "json"), &page)
	if len(page.Events) != 3 || page.NextCursor == "" {
		t.Fatalf("--limit 3: %d events, cursor %q", len(page.Events), page.NextCursor)
	}
	last := page.Events[2].Seq
	var next api.AuditPage
	decodeJSON(t, ok(t, "audit", "--grant", x.Grant, "--limit", "3", "--cursor", page.NextCursor, "--json"), &next)
	if len(next.Events) != 3 || next.Events[0].Seq >= last {
		t.Fatalf("the second page starts at seq %d, after the first page's last %d", next.Events[0].Seq, last)
	}
	var all api.AuditPage
	decodeJSON(t, ok(t, "audit", "--grant", x.Grant, "--all", "--format", "json"), &all)
	if want := s.count(func(e audit.Event) bool { return e.GrantID == x.Grant }); len(all.Events) != want || all.NextCursor != "" {
		t.Fatalf("--all: %d events (cursor %q), want %d", len(all.Events), all.NextCursor, want)
	}
	for i := 1; i < len(all.Events); i++ {
		if all.Events[i].Seq >= all.Events[i-1].Seq {
			t.Fatalf("--all is not newest first at %d", i)
		}
	}

	// --since and --format csv.
	out = ok(t, "audit", "--since", "2h", "--action", "proxy.call", "--format", "csv")
	want = s.count(func(e audit.Event) bool { return e.Action == "proxy.call" })
	if got := lines(out); len(got) != want+1 || !strings.HasPrefix(got[0], "seq,id,time,request_id,action") {
		t.Fatalf("--format csv: %d lines, want %d and a header\n%s", len(got), want+1, out)
	}
	if out := ok(t, "audit", "--since", "2020-01-01", "--until", "2020-01-02", "--format", "jsonl"); out != "" {
		t.Errorf("a window before the incident is not empty:\n%s", out)
	}

	// Typos are errors that say what to write, never an empty answer.
	fails(t, "", []string{"audit", "--agent", "@nobody"}, "no agent with handle @nobody", "mandate agents list")
	fails(t, "", []string{"audit", "--action", "proxy.cal"}, `unknown action "proxy.cal"`, "proxy.call, resource.deny")
	fails(t, "", []string{"audit", "--outcome", "ok"}, "success, denied, failure, pending")
	fails(t, "", []string{"audit", "--since", "yesterday"}, "a duration ago (15m, 2h, 7d)")
	fails(t, "", []string{"audit", "--since", "1h", "--until", "2h"}, "must be after since")
	fails(t, "", []string{"audit", "--format", "xml"}, "table, json, jsonl, csv")
	fails(t, "", []string{"audit", "--cursor", "abc"}, "pass next_cursor from the previous page")
	status, body := get(t, s.URL+"/v1/audit?tsk="+x.Tasks[2], s.aliceToken)
	if status != http.StatusBadRequest || !strings.Contains(body, `unknown query parameter \"tsk\"`) {
		t.Errorf("GET /v1/audit?tsk=: %d %s", status, body)
	}

	// A non-admin sees only their own principal's events; an admin sees them too.
	fails(t, "", []string{"audit", "--principal", "usr_someone"}, "only an admin")
	t.Setenv(envToken, s.AdminToken)
	if out := ok(t, "audit", "--task", x.Tasks[2], "--format", "jsonl"); len(lines(out)) != s.count(func(e audit.Event) bool { return e.TaskID == x.Tasks[2] }) {
		t.Errorf("the admin's audit --task differs:\n%s", out)
	}
	ok(t, "users", "create", "bob")
	var bob api.TokenJSON
	decodeJSON(t, ok(t, "tokens", "create", "--user", "bob", "--json"), &bob)
	t.Setenv(envToken, bob.Token)
	if out := ok(t, "audit", "--task", x.Tasks[2], "--format", "jsonl"); out != "" {
		t.Errorf("bob sees alice's events:\n%s", out)
	}
	fails(t, "", []string{"audit", "--agent", "@fetcher"}, "no agent with handle @fetcher") // not bob's agent
}

// TestAuditExplainThroughTheCLI: one command answers who ran the agent and on whose behalf, from
// the trail.
func TestAuditExplainThroughTheCLI(t *testing.T) {
	s := newIncidentServer(t)
	x := s.x

	out := ok(t, "audit", "explain", x.Calls[0])
	hasAll(t, out, "proxy.call request "+x.Calls[0], "outcome    success", "GET ahrefs /v3/site-explorer/domain-rating?target (values hashed)",
		"status 200, 0 bytes in, 1843 bytes out", "10.0.0.7  seo-agent/1.2",
		"principal  "+x.Principal, "grant      "+x.Grant+", granted by alice ("+x.Principal+")", "budget.calls=1000; lifetime=720h", "expires 20",
		"1. @planner ("+x.Agents[0].ID+")", "2. @researcher", "3. @fetcher ("+x.Agents[2].ID+")",
		x.Purposes[0], x.Purposes[1], x.Purposes[2], "instance key   "+x.Instance, x.Agents[2].DID,
		"valid: no link")
	if strings.Contains(out, "INVALID") || strings.Contains(out, "note:") {
		t.Errorf("a valid call explained as invalid or incomplete:\n%s", out)
	}

	hasAll(t, ok(t, "audit", "explain", x.Lost), "outcome unknown (no completion recorded)")
	hasAll(t, ok(t, "audit", "explain", x.AfterRevoke), "denied (task_revoked)", "INVALID",
		"task "+x.Tasks[1]+" revoked by alice", "task "+x.Tasks[2]+" revoked by alice", "because of "+x.Tasks[1])
	hasAll(t, ok(t, "audit", "explain", x.Revoke), "task.revoke request "+x.Revoke, "Other events of this request", "parent_revoked")

	var ex audit.Explanation
	decodeJSON(t, ok(t, "audit", "explain", x.Calls[1], "--format", "json"), &ex)
	if !ex.Valid || len(ex.Chain) != 3 || ex.Chain[2].Purpose != x.Purposes[2] || ex.Completion == nil || ex.Grant.GrantedBy != x.Principal {
		t.Errorf("--format json: %+v", ex)
	}
	// By the completion's event id: the same call.
	hasAll(t, ok(t, "audit", "explain", ex.Completion.ID), "proxy.call request "+x.Calls[1], "status 200")

	fails(t, "", []string{"audit", "explain", "req_nothing"}, `no audit event or request "req_nothing"`)
	// Only the principal of the event, or an admin.
	t.Setenv(envToken, s.AdminToken)
	ok(t, "audit", "explain", x.Calls[0])
	ok(t, "users", "create", "bob")
	var bob api.TokenJSON
	decodeJSON(t, ok(t, "tokens", "create", "--user", "bob", "--json"), &bob)
	t.Setenv(envToken, bob.Token)
	fails(t, "", []string{"audit", "explain", x.Calls[0]}, "no audit event or request")
}

// TestAuditMineThroughTheCLI: a person's own account, readable without jq.
func TestAuditMineThroughTheCLI(t *testing.T) {
	s := newIncidentServer(t)
	x := s.x
	out := ok(t, "audit", "mine")
	hasAll(t, out, "What agents did for "+x.Principal, "@fetcher ("+x.Agents[2].ID+"): 8 calls, 2 refusals",
		"task "+x.Tasks[2]+` "`+x.Purposes[2]+`"`, "calls    ahrefs: 8 (5 ok, 2 refused, 1 outcome unknown)",
		"refused  proxy.call route_not_allowed x1", "refused  proxy.call task_revoked x1",
		"revoke", "because of "+x.Tasks[1], "@planner", x.Purposes[0])
	var rep audit.Account
	decodeJSON(t, ok(t, "audit", "mine", "--format", "json"), &rep)
	if rep.PrincipalID != x.Principal || len(rep.Agents) != 3 {
		t.Errorf("--format json: %+v", rep)
	}
	hasAll(t, ok(t, "audit", "mine", "--since", "2090-01-01", "--until", "2099-01-01"), "No agent acted for you")
	fails(t, "", []string{"audit", "mine", "--principal", "usr_other"}, "only an admin")
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// docs/audit.md runs as pasted: every sh block, from the event schema to the incident
// investigation, against a real server whose trail holds the incident the page tells (its
// request, task and grant ids are audittest's), as an admin.
func TestAuditDocRunsAsPasted(t *testing.T) {
	s := newIncidentServer(t, "req_4kq7bz2xwd5mn3yh6tcp0rjlfe")
	dir := t.TempDir()
	env := docEnv(t, dir, "./cmd/mandate")
	env = append(env, envServer+"="+s.URL, envToken+"="+s.AdminToken)
	script := docBlocks(t, "../../docs/audit.md", "## The event", false)
	out := runScript(t, dir, script, env)
	x := s.x
	hasAll(t, out,
		// explain req_4kq7…: both questions, with purposes and the instance key.
		"proxy.call request req_4kq7bz2xwd5mn3yh6tcp0rjlfe", "granted by alice", x.Purposes[0], x.Purposes[1], x.Purposes[2],
		"instance key   "+x.Instance, "valid: no link",
		// audit --task: the task's calls, the refusal and the revocation.
		"denied (route_not_allowed)", "success (parent_revoked)", "ahrefs GET /v3/site-explorer/backlinks",
		// explain of the call refused after the revocation.
		"INVALID", "task "+x.Tasks[1]+" revoked by alice",
		// audit mine as the admin: no agent acted for them.
		"No agent acted for you")
	for file, want := range map[string]int{
		"calls.csv":       1 + s.count(func(e audit.Event) bool { return e.Upstream() == "ahrefs" }),
		"exchanges.jsonl": s.count(func(e audit.Event) bool { return e.Action == "token.exchange" }),
		"incident.csv":    1 + s.count(func(e audit.Event) bool { return e.GrantID == x.Grant }),
	} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("the walkthrough wrote no %s: %v", file, err)
		}
		if got := len(strings.Split(strings.TrimSpace(string(b)), "\n")); got != want {
			t.Errorf("%s has %d lines, want %d", file, got, want)
		}
	}
}

// The JSON examples of docs/audit.md's event section are events: each decodes into audit.Event
// with no member left over, so the page cannot show a field the schema does not have.
func TestAuditDocExamplesAreEvents(t *testing.T) {
	raw, err := os.ReadFile("../../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	text = text[strings.Index(text, "\n## The event\n"):strings.Index(text, "\n## Querying\n")]
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(text, -1)
	if len(blocks) < 4 {
		t.Fatalf("only %d JSON examples in the event section", len(blocks))
	}
	for i, b := range blocks {
		dec := json.NewDecoder(strings.NewReader(b[1]))
		dec.DisallowUnknownFields()
		var e audit.Event
		if err := dec.Decode(&e); err != nil {
			t.Errorf("example %d is not an event: %v", i+1, err)
			continue
		}
		if err := audit.CheckAction(e.Action); err != nil || audit.CheckOutcome(string(e.Outcome)) != nil || e.Seq == 0 || e.Hash == "" {
			t.Errorf("example %d: action %q outcome %q seq %d hash %q", i+1, e.Action, e.Outcome, e.Seq, e.Hash)
		}
	}
}

// send makes an API call as token with the client's X-Request-Id and returns the server's
// request id (req_…) its events carry.
func sendWithClientID(t *testing.T, ts *testServer, token, clientID string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/v1/tokens", strings.NewReader(`{"name":"ci"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", clientID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/tokens: %d %s", resp.StatusCode, b)
	}
	// The newest event that carries the client's id is this request's.
	code, body := get(t, ts.URL+"/v1/audit?limit=1&client_request_id="+url.QueryEscape(clientID), ts.AdminToken)
	var page api.AuditPage
	if err := json.Unmarshal([]byte(body), &page); code != http.StatusOK || err != nil || len(page.Events) != 1 {
		t.Fatalf("GET /v1/audit?client_request_id=%s: %d %v %s", clientID, code, err, body)
	}
	if r := page.Events[0].RequestID; !strings.HasPrefix(r, "req_") {
		t.Fatalf("the event's request id %q is not the server's", r)
	}
	return page.Events[0].RequestID
}

// TestAuditExplainNeverMergesClientRequestIDs: bob, then alice, send X-Request-Id: shared-1.
// The client's id is not the server's and is not unique: explain resolves a server request id
// (req_…) or an event id; given the client's id, each principal gets their own request (found
// by the client's id, said so), never the other's and never the two merged, even though bob's
// came first; the admin, who sees both, is told the two server request ids to explain one by.
// Through the real API and the CLI.
func TestAuditExplainNeverMergesClientRequestIDs(t *testing.T) {
	ts := newTestServer(t)
	t.Setenv(envServer, ts.URL)
	t.Setenv(envToken, ts.AdminToken)
	tokens := map[string]string{}
	principals := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		var u api.UserJSON
		decodeJSON(t, ok(t, "users", "create", name, "--json"), &u)
		var tok api.TokenJSON
		decodeJSON(t, ok(t, "tokens", "create", "--user", name, "--json"), &tok)
		tokens[name], principals[name] = tok.Token, u.ID
	}
	reqs := map[string]string{}
	for _, name := range []string{"bob", "alice"} { // bob's first: the first match is not alice's
		reqs[name] = sendWithClientID(t, ts, tokens[name], "shared-1")
	}
	if reqs["alice"] == reqs["bob"] {
		t.Fatalf("two requests share the server's id %s", reqs["alice"])
	}

	for name, other := range map[string]string{"alice": "bob", "bob": "alice"} {
		t.Setenv(envToken, tokens[name])
		// The CLI: their own request, said to be found by the client's id; nothing of the other's.
		out := ok(t, "audit", "explain", "shared-1")
		hasAll(t, out, "request "+reqs[name], "found by the client's X-Request-Id shared-1", principals[name])
		if strings.Contains(out, reqs[other]) || strings.Contains(out, principals[other]) {
			t.Errorf("%s's explain of shared-1 shows %s's request:\n%s", name, other, out)
		}
		var x audit.Explanation
		decodeJSON(t, ok(t, "audit", "explain", "shared-1", "--format", "json"), &x)
		if x.Event.RequestID != reqs[name] || x.PrincipalID != principals[name] || x.FoundByClientRequestID != "shared-1" {
			t.Errorf("%s: explained request %s of %s (found by %q), want %s of %s", name, x.Event.RequestID, x.PrincipalID,
				x.FoundByClientRequestID, reqs[name], principals[name])
		}
		for _, o := range x.Others {
			if o.RequestID != reqs[name] {
				t.Errorf("%s: event %s of request %s merged into the explanation of %s", name, o.ID, o.RequestID, reqs[name])
			}
		}
		// By the server's id: their own is explained (not found by the client's id); the
		// other's is a 404, as a missing id.
		var own audit.Explanation
		decodeJSON(t, ok(t, "audit", "explain", reqs[name], "--format", "json"), &own)
		if own.Event.RequestID != reqs[name] || own.FoundByClientRequestID != "" {
			t.Errorf("%s: explain %s gave request %s (found by %q)", name, reqs[name], own.Event.RequestID, own.FoundByClientRequestID)
		}
		fails(t, "", []string{"audit", "explain", reqs[other]}, "no audit event or request")
		// The API.
		code, body := get(t, ts.URL+"/v1/audit/explain/shared-1", tokens[name])
		if code != http.StatusOK || !strings.Contains(body, `"found_by_client_request_id":"shared-1"`) || strings.Contains(body, reqs[other]) {
			t.Errorf("%s: GET /v1/audit/explain/shared-1: %d %s", name, code, body)
		}
	}

	// The admin sees both: no explanation, the two server request ids to explain one by.
	t.Setenv(envToken, ts.AdminToken)
	msg := fails(t, "", []string{"audit", "explain", "shared-1"}, reqs["alice"], reqs["bob"], "mandate audit explain req_")
	if !strings.Contains(msg, "X-Request-Id") {
		t.Errorf("the admin is not told shared-1 is a client's id: %s", msg)
	}
	code, body := get(t, ts.URL+"/v1/audit/explain/shared-1", ts.AdminToken)
	if code != http.StatusConflict || !strings.Contains(body, `"error": "conflict"`) || !strings.Contains(body, reqs["alice"]) || !strings.Contains(body, reqs["bob"]) {
		t.Errorf("admin GET /v1/audit/explain/shared-1: %d %s", code, body)
	}
	for name, req := range reqs {
		var x audit.Explanation
		decodeJSON(t, ok(t, "audit", "explain", req, "--format", "json"), &x)
		if x.Event.RequestID != req || x.PrincipalID != principals[name] {
			t.Errorf("admin: explain %s gave request %s of %s", req, x.Event.RequestID, x.PrincipalID)
		}
		for _, o := range x.Others {
			if o.RequestID != req {
				t.Errorf("admin: event %s of request %s merged into the explanation of %s", o.ID, o.RequestID, req)
			}
		}
	}

	// A client id only one principal sent: the admin gets that request, said to be found by it;
	// a principal who did not send it gets a 404.
	only := sendWithClientID(t, ts, tokens["alice"], "alice-only")
	hasAll(t, ok(t, "audit", "explain", "alice-only"), "request "+only, "found by the client's X-Request-Id alice-only")
	t.Setenv(envToken, tokens["bob"])
	fails(t, "", []string{"audit", "explain", "alice-only"}, "no audit event or request")
	// Alice sends shared-1 again: now she too gets a list, of her own two requests only.
	second := sendWithClientID(t, ts, tokens["alice"], "shared-1")
	t.Setenv(envToken, tokens["alice"])
	msg = fails(t, "", []string{"audit", "explain", "shared-1"}, reqs["alice"], second, "2 requests")
	if strings.Contains(msg, reqs["bob"]) {
		t.Errorf("alice is shown bob's request: %s", msg)
	}
}
