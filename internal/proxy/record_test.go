package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/vault"
)

// faultyAudit is the proxy's audit store with injectable failures, in the manner of SPIRE's
// fake datastore: every append goes to the real (in-memory) store unless told to fail.
type faultyAudit struct {
	*fakeAudit
	fail        atomic.Bool // every append fails
	failPending atomic.Bool // appends of pending records fail
	failNext    atomic.Int64
	failLater   atomic.Int64 // the next appends of events that are not pending records fail
}

var errAuditDown = errors.New("audit store down")

func (f *faultyAudit) AppendEvent(ctx context.Context, ev audit.Event) error {
	if f.fail.Load() || (f.failPending.Load() && ev.Outcome == audit.OutcomePending) {
		return errAuditDown
	}
	if f.failNext.Add(-1) >= 0 {
		return errAuditDown
	}
	f.failNext.Store(0)
	if ev.Outcome != audit.OutcomePending {
		if f.failLater.Add(-1) >= 0 {
			return errAuditDown
		}
		f.failLater.Store(0)
	}
	return f.fakeAudit.AppendEvent(ctx, ev)
}

func newFaultyEnv(t *testing.T) (*env, *faultyAudit) {
	fa := &faultyAudit{fakeAudit: &fakeAudit{}}
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.Audit = fa }})
	fa.settle = e.settle
	return e, fa
}

// refusalBody is the JSON body of a refusal.
type refusalBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	RequestID        string `json:"request_id"`
}

// TestFailClosed: when the pending record cannot be written, the call is refused with 503
// audit_unavailable, a sentence and the request id, and the upstream (a real server on
// loopback) receives nothing, with or without a body; calls refused before forwarding are
// refused as before.
// TestCompletionRetried: a completion whose write fails for a while (a database blip) is
// written once the store answers again, so a call that ran is not left "outcome unknown" (the
// outside attack lost 12 of 156 completions to a PostgreSQL blip).
func TestCompletionRetried(t *testing.T) {
	e, fa := newFaultyEnv(t)
	tok := e.token(tokenOpts{scope: "api:read"})
	fa.failLater.Store(3)
	resp, body := e.do(e.request("GET", "/proxy/api/items/1", tok, nil))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	e.settle()
	var pending, done int
	for _, ev := range fa.all() {
		switch ev.Outcome {
		case audit.OutcomePending:
			pending++
		case audit.OutcomeSuccess:
			done++
		}
	}
	if pending != 1 || done != 1 {
		t.Errorf("%d pending records and %d completions, want one each after three failed writes", pending, done)
	}
}

func TestFailClosed(t *testing.T) {
	e, fa := newFaultyEnv(t)
	tok := e.token(tokenOpts{scope: "api:read api:write"})
	for name, mode := range map[string]func(bool){
		"every write fails":   func(on bool) { fa.fail.Store(on) },
		"pending write fails": func(on bool) { fa.failPending.Store(on) },
		"next write fails": func(on bool) {
			if on {
				fa.failNext.Store(1)
			}
		},
	} {
		for _, req := range []func() *http.Request{
			func() *http.Request { return e.request("GET", "/proxy/api/items/1?q=1", tok, nil) },
			func() *http.Request { return e.request("PUT", "/proxy/api/items/1", tok, strings.NewReader("a body")) },
		} {
			t.Run(name, func(t *testing.T) {
				before := len(e.upstreamRequests())
				mode(true)
				r := req()
				resp, body := e.do(r)
				mode(false)
				var got refusalBody
				_ = json.Unmarshal([]byte(body), &got)
				if resp.StatusCode != http.StatusServiceUnavailable || got.Error != "audit_unavailable" || got.RequestID == "" ||
					!strings.Contains(got.ErrorDescription, "nothing was forwarded") {
					t.Fatalf("%s: status %d %s, want 503 audit_unavailable with the request id", r.Method, resp.StatusCode, body)
				}
				if n := len(e.upstreamRequests()); n != before {
					t.Fatalf("%s: the upstream received %d requests while the audit trail was down", r.Method, n-before)
				}
				e.settle()
				for _, ev := range fa.all() {
					if ev.RequestID == got.RequestID && ev.Outcome == audit.OutcomePending {
						t.Errorf("a pending record of the refused call: %+v", ev)
					}
				}
			})
		}
	}
	t.Run("refused before forwarding", func(t *testing.T) {
		fa.fail.Store(true)
		defer fa.fail.Store(false)
		resp, body := e.do(e.request("DELETE", "/proxy/api/items/1", tok, nil))
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("status %d %s, want the route refusal (403)", resp.StatusCode, body)
		}
	})
	t.Run("recovers", func(t *testing.T) {
		before := len(e.upstreamRequests())
		if resp, body := e.do(e.request("GET", "/proxy/api/items/1", tok, nil)); resp.StatusCode != 200 || len(e.upstreamRequests()) != before+1 {
			t.Fatalf("status %d %s", resp.StatusCode, body)
		}
	})
}

// TestPendingBeforeUpstream is the fail-closed promise as a property: over random calls made
// concurrently (allowed and refused routes, bodies, queries, failing audit writes), every
// request the upstream receives has a pending record already in the trail, found by the
// Mandate-Request-Id it carries; every pending record has exactly one completion (same request
// id and token fields, Cause = its id, the status the agent saw); a call refused before
// forwarding is one event and never reached the upstream.
func TestPendingBeforeUpstream(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	e, fa := newFaultyEnv(t)
	var (
		mu       sync.Mutex
		upstream = map[string]bool{} // request id -> its pending record was in the trail
	)
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		id := r.Header.Get(HeaderRequestID)
		found := false
		for _, ev := range fa.snapshot() {
			found = found || (ev.RequestID == id && ev.Outcome == audit.OutcomePending)
		}
		mu.Lock()
		if _, dup := upstream[id]; dup {
			t.Errorf("request id %s reached the upstream twice", id)
		}
		upstream[id] = found
		mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok "+id)
	})
	tok := e.token(tokenOpts{scope: "api:read api:write"})
	type sent struct {
		status int
		reqID  string
	}
	var (
		wg    sync.WaitGroup
		smu   sync.Mutex
		calls []sent
	)
	const n = 160
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				r := rand.New(rand.NewPCG(seed, uint64(i)))
				method, path := "GET", "/proxy/api/items/"+fmt.Sprint(r.IntN(100))
				var body io.Reader
				switch r.IntN(4) {
				case 0:
					method, body = "PUT", strings.NewReader(strings.Repeat("x", r.IntN(5000)))
				case 1:
					method = "DELETE" // no route allows it
				}
				if r.IntN(2) == 0 {
					path += fmt.Sprintf("?a=%d&b=%x", r.IntN(10), r.Uint32())
				}
				if r.IntN(8) == 0 {
					fa.failNext.Store(1) // some write fails: the call is refused or recorded late
				}
				resp, err := e.client.Do(e.request(method, path, tok, body))
				if err != nil {
					t.Error(err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var rb refusalBody
				_ = json.Unmarshal(b, &rb)
				id := rb.RequestID
				if resp.StatusCode == 200 {
					id = strings.TrimPrefix(string(b), "ok ")
				}
				smu.Lock()
				calls = append(calls, sent{resp.StatusCode, id})
				smu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	e.settle()

	evs := fa.all()
	pending := map[string]audit.Event{} // by event id
	completions := map[string][]audit.Event{}
	byRequest := map[string][]audit.Event{}
	for _, ev := range evs {
		byRequest[ev.RequestID] = append(byRequest[ev.RequestID], ev)
		if ev.Outcome == audit.OutcomePending {
			pending[ev.ID] = ev
		} else if ev.Cause != "" {
			completions[ev.Cause] = append(completions[ev.Cause], ev)
		}
	}
	for id, durable := range upstream {
		if !durable {
			t.Errorf("request %s reached the upstream before its pending record was written", id)
		}
	}
	if len(pending) != len(upstream) {
		t.Errorf("%d pending records for %d requests the upstream received", len(pending), len(upstream))
	}
	for id, p := range pending {
		cs := completions[id]
		if len(cs) > 1 {
			t.Errorf("pending %s has %d completions", id, len(cs))
		}
		for _, c := range cs {
			if c.RequestID != p.RequestID || c.TaskID != p.TaskID || c.AgentID != p.AgentID || c.TokenID != p.TokenID || c.Call == nil || c.Call.Route != p.Call.Route {
				t.Errorf("completion %+v does not match its pending record %+v", c, p)
			}
		}
	}
	seenStatus := 0
	for _, c := range calls {
		evs := byRequest[c.reqID]
		reached := upstream[c.reqID]
		switch {
		case c.status == 200:
			seenStatus++
			if !reached || len(evs) > 2 {
				t.Errorf("call %s (200): upstream %v, events %d", c.reqID, reached, len(evs))
			}
			for _, ev := range evs {
				if ev.Outcome != audit.OutcomePending && (ev.Outcome != audit.OutcomeSuccess || ev.Call.Status != 200) {
					t.Errorf("call %s (200) recorded as %s %d", c.reqID, ev.Outcome, ev.Call.Status)
				}
			}
		case reached:
			t.Errorf("call %s refused with %d reached the upstream", c.reqID, c.status)
		case len(evs) > 1:
			t.Errorf("call %s refused with %d has %d events, want one", c.reqID, c.status, len(evs))
		}
	}
	if seenStatus == 0 || seenStatus == n {
		t.Errorf("%d of %d calls succeeded: the property needs both kinds", seenStatus, n)
	}
}

// TestEventFields: the pending record and the completion of a call carry who acted and for
// whom (actor, principal, DID, key, instance key, task and parent task, grant, chain oldest
// first, scopes, audience, token id) and the call (upstream, method, path as received, route,
// query names with keyed hashes; then status, bytes), and the completion names the pending
// record as its cause.
func TestEventFields(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.AuditKey = key }})
	e.tasks.put(delegation.Task{ID: "tsk_1", GrantID: "gr_1", PrincipalID: "usr_1", InstanceJKT: "inst-jkt", Purpose: "weekly report",
		Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour)})
	tok := e.token(tokenOpts{scope: "api:read api:write"})
	resp, body := e.do(e.request("PUT", "/proxy/api/items/7%20x?b=2&a=hello%20world&flag&b=2", tok, strings.NewReader("hello")))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	e.settle()
	evs := e.audit.all()
	if len(evs) != 2 {
		t.Fatalf("%d events, want the pending record and its completion", len(evs))
	}
	pending, done := evs[0], evs[1]
	hash := func(v string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(v))
		return hex.EncodeToString(m.Sum(nil)[:16])
	}
	want := audit.Event{
		Action: ActionCall, Outcome: audit.OutcomePending, ActorType: audit.ActorAgent, ActorID: "agt_1", ActorHandle: "researcher",
		PrincipalID: "usr_1", AgentID: "agt_1", AgentDID: "did:key:z6Mk-test", KeyJKT: e.jkt, InstanceKey: "inst-jkt",
		TaskID: "tsk_1", ParentTaskID: "tsk_0", GrantID: "gr_1",
		Chain: []audit.Link{{AgentID: "agt_0", Handle: "lead", DID: "did:key:z6Mk-lead", TaskID: "tsk_0"},
			{AgentID: "agt_1", Handle: "researcher", DID: "did:key:z6Mk-test", TaskID: "tsk_1"}},
		Scopes: []string{"api:read", "api:write"}, Resources: []string{e.issuer + "/proxy/api"}, Target: "api",
		Call: &audit.Call{Upstream: "api", Method: "PUT", Path: "/items/7%20x", Route: "/items/**", Query: []audit.QueryParam{
			{Name: "b", ValueHash: hash("2")}, {Name: "a", ValueHash: hash("hello world")}, {Name: "flag", ValueHash: hash("")}, {Name: "b", ValueHash: hash("2")}}},
		UserAgent: "Go-http-client/1.1",
	}
	ignore := cmpopts.IgnoreFields(audit.Event{}, "ID", "Time", "RequestID", "Detail", "TokenID", "Cause")
	if diff := cmp.Diff(want, pending, ignore); diff != "" {
		t.Errorf("pending record (-want +got):\n%s", diff)
	}
	if pending.TokenID == "" || pending.RequestID == "" || !strings.Contains(pending.Detail, "forwarding") {
		t.Errorf("pending record: token id %q, request id %q, detail %q", pending.TokenID, pending.RequestID, pending.Detail)
	}
	want.Outcome, want.Cause, want.TokenID = audit.OutcomeSuccess, pending.ID, pending.TokenID
	call := *want.Call
	call.Status, call.BytesIn, call.BytesOut = 200, 5, int64(len(body))
	want.Call = &call
	if diff := cmp.Diff(want, done, cmpopts.IgnoreFields(audit.Event{}, "ID", "Time", "RequestID", "Detail"),
		cmpopts.IgnoreFields(audit.Call{}, "DurationUS")); diff != "" {
		t.Errorf("completion (-want +got):\n%s", diff)
	}
	if done.RequestID != pending.RequestID || done.ID == pending.ID {
		t.Errorf("completion %s of request %s, pending %s of %s", done.ID, done.RequestID, pending.ID, pending.RequestID)
	}
	if strings.Contains(done.Detail, "hello") || strings.Contains(done.Detail, "flag") {
		t.Errorf("the detail holds the query: %q", done.Detail)
	}
}

// TestRefusalAttributed: a token whose signature verifies and is refused (its task revoked,
// its proof replayed, its task ended) is recorded as that agent's refusal, for its principal,
// task and grant; one event, no pending record.
func TestRefusalAttributed(t *testing.T) {
	for name, tc := range map[string]struct {
		setup   func(e *env)
		twice   bool // send the same request (the same proof) twice
		present func(req *http.Request, tok string)
		reason  string
	}{
		"task revoked":   {setup: func(e *env) { e.status.revoke("tsk_1") }, reason: "token_revoked"},
		"agent revoked":  {setup: func(e *env) { e.status.revoke("agt_1") }, reason: "token_revoked"},
		"replayed proof": {twice: true, reason: "token_replay"},
		"task ended": {setup: func(e *env) {
			e.tasks.put(delegation.Task{ID: "tsk_1", GrantID: "gr_1", Status: delegation.TaskRevoked, ExpiresAt: time.Now().Add(time.Hour)})
		}, reason: reasonTaskEnded},
		"task expired": {setup: func(e *env) {
			e.tasks.put(delegation.Task{ID: "tsk_1", GrantID: "gr_1", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(-time.Second)})
		}, reason: reasonTaskEnded},
		// A valid token presented wrongly, as by a thief without its key: refused before the
		// proof, still that agent's.
		"sent as bearer": {present: func(req *http.Request, tok string) {
			req.Header.Del("DPoP")
			req.Header.Set("Authorization", "Bearer "+tok)
		}, reason: "token_bearer"},
		"no proof":   {present: func(req *http.Request, tok string) { req.Header.Del("DPoP") }, reason: "token_missing_proof"},
		"two proofs": {present: func(req *http.Request, tok string) { req.Header.Add("DPoP", req.Header.Get("DPoP")) }, reason: "token_multiple_proofs"},
		"malformed scheme": {present: func(req *http.Request, tok string) {
			req.Header.Set("Authorization", "DPoP\t"+tok)
		}, reason: "token_scheme"},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			tok := e.token(tokenOpts{scope: "api:read"})
			req := e.request("GET", "/proxy/api/items/1", tok, nil)
			if tc.twice {
				if resp, _ := e.do(req); resp.StatusCode != 200 {
					t.Fatalf("first: %d", resp.StatusCode)
				}
				req = req.Clone(context.Background())
			}
			if tc.setup != nil {
				tc.setup(e)
			}
			if tc.present != nil {
				tc.present(req, tok)
			}
			before := len(e.upstreamRequests())
			if resp, body := e.do(req); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %d %s", resp.StatusCode, body)
			}
			ev := e.audit.last(t)
			got := audit.Event{Outcome: ev.Outcome, Reason: ev.Reason, ActorType: ev.ActorType, ActorID: ev.ActorID, ActorHandle: ev.ActorHandle,
				PrincipalID: ev.PrincipalID, AgentID: ev.AgentID, TaskID: ev.TaskID, GrantID: ev.GrantID, ParentTaskID: ev.ParentTaskID, KeyJKT: ev.KeyJKT}
			want := audit.Event{Outcome: audit.OutcomeDenied, Reason: tc.reason, ActorType: audit.ActorAgent, ActorID: "agt_1", ActorHandle: "researcher",
				PrincipalID: "usr_1", AgentID: "agt_1", TaskID: "tsk_1", GrantID: "gr_1", ParentTaskID: "tsk_0", KeyJKT: e.jkt}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("refusal (-want +got):\n%s", diff)
			}
			if len(e.upstreamRequests()) != before || ev.Cause != "" {
				t.Errorf("refused call reached the upstream, or has a pending record (cause %q)", ev.Cause)
			}
			for _, ev2 := range e.audit.all() {
				if ev2.RequestID == ev.RequestID && ev2.ID != ev.ID {
					t.Errorf("a second event of the refused call: %+v", ev2)
				}
			}
		})
	}
	t.Run("token not verified: anonymous", func(t *testing.T) {
		e := newEnv(t)
		tok := e.token(tokenOpts{scope: "api:read"})
		req := e.request("GET", "/proxy/api/items/1", tok[:len(tok)-4]+"AAAA", nil)
		if resp, _ := e.do(req); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if ev := e.audit.last(t); ev.ActorType != audit.ActorAnonymous || ev.AgentID != "" || ev.PrincipalID != "" {
			t.Errorf("a forged token's refusal attributed: %+v", ev)
		}
	})
	t.Run("forged token as bearer: anonymous", func(t *testing.T) {
		e := newEnv(t)
		tok := e.token(tokenOpts{scope: "api:read"})
		req, _ := http.NewRequest("GET", e.issuer+"/proxy/api/items/1", nil)
		req.Header.Set("Authorization", "Bearer "+tok[:len(tok)-4]+"AAAA")
		if resp, _ := e.do(req); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if ev := e.audit.last(t); ev.Reason != "token_bearer" || ev.ActorType != audit.ActorAnonymous || ev.AgentID != "" || ev.PrincipalID != "" {
			t.Errorf("a forged token's refusal attributed: %+v", ev)
		}
	})
}

// TestNoValueInTrail: no query value, header value or body byte the agent sends, and no form of
// the injected credential (even written by the agent in its path or query), appears in any
// event's JSON, over random calls.
func TestNoValueInTrail(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	for i := range 40 {
		checkNoValueInTrail(t, seed+uint64(i))
	}
}

func FuzzNoValueInTrail(f *testing.F) {
	for _, s := range []uint64{0, 1, 2, 42, 1 << 40} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, seed uint64) { checkNoValueInTrail(t, seed) })
}

func checkNoValueInTrail(t *testing.T, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	word := func() string {
		const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.~!$'()*,;:@"
		b := make([]byte, 12+r.IntN(20))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		return "V" + string(b)
	}
	e := newEnv(t)
	secret := "sk_" + word()
	e.creds.secret.Store(&secret)
	auth := []vault.AuthKind{vault.AuthBearer, vault.AuthHeader, vault.AuthQuery}[r.IntN(3)]
	e.upstreams.put(vault.Upstream{Name: "api", BaseURL: e.up.URL + "/base", Auth: auth, Param: map[vault.AuthKind]string{vault.AuthHeader: "X-Api-Key", vault.AuthQuery: "api_key"}[auth],
		AllowPrivate: true, Routes: []vault.Route{{Scope: "api:write", Methods: []string{"GET", "POST", "PUT"}, Paths: []string{"/items/**"}}}})
	tok := e.token(tokenOpts{scope: "api:write"})
	var values []string
	q := make([]string, 0, 8)
	names := []string{"q", "page", "api_key", "token", "filter[name]", "x"}
	for range r.IntN(8) {
		v := word()
		if r.IntN(6) == 0 {
			v = secret // the agent writes the credential itself
		}
		values = append(values, v)
		q = append(q, names[r.IntN(len(names))]+"="+urlEscape(v))
	}
	path := "/proxy/api/items/" + fmt.Sprint(r.IntN(1000))
	switch r.IntN(6) { // the credential in the path is masked, however it is percent-encoded
	case 0:
		path += "/" + urlEscape(secret)
	case 1:
		path += "/" + escapeAll(secret) // every byte (red team: kept as sent)
	case 2:
		path += "/" + strings.ReplaceAll(escapeAll(secret), "%", "%25") // encoded twice
	}
	if r.IntN(5) == 0 { // the credential as a query name, encoded twice (red team: decoded once, kept)
		q = append(q, strings.ReplaceAll(escapeAll(secret), "%", "%25")+"=1")
	}
	if len(q) > 0 {
		path += "?" + strings.Join(q, "&")
	}
	method := []string{"GET", "POST", "PUT", "DELETE"}[r.IntN(4)] // DELETE: refused
	var body io.Reader
	if method != "GET" {
		v := word()
		values = append(values, v)
		body = strings.NewReader(`{"note":"` + v + `"}`)
	}
	req := e.request(method, path, tok, body)
	if r.IntN(3) == 0 { // what the agent says about itself (red team: kept verbatim)
		req.Header.Set("User-Agent", "tool/1 "+secret)
	}
	if r.IntN(3) == 0 {
		req.Header.Set("X-Request-Id", secret)
	}
	for range r.IntN(4) {
		v := word()
		values = append(values, v)
		req.Header.Add("X-Custom-"+fmt.Sprint(r.IntN(3)), v)
	}
	resp, _ := e.do(req)
	e.settle()
	evs := e.audit.all()
	if len(evs) == 0 {
		t.Fatal("no event")
	}
	if resp.StatusCode == 200 && len(evs) != 2 {
		t.Errorf("%d events of a forwarded call", len(evs))
	}
	for _, ev := range evs {
		b, _ := json.Marshal(ev)
		for _, v := range append(values, secret, tok) {
			if strings.Contains(string(b), v) || strings.Contains(string(b), urlEscape(v)) {
				t.Fatalf("seed %d: an event holds %q: %s", seed, v, b)
			}
		}
		if f, ok := containsForm(b, secret); ok {
			t.Fatalf("seed %d: an event holds the credential as %q: %s", seed, f, b)
		}
	}
	// Nor the server's access log line (red team: it logged the path as sent).
	logs := e.accessLog.String()
	for _, form := range []string{secret, urlEscape(secret), escapeAll(secret)} {
		if strings.Contains(logs, form) {
			t.Fatalf("seed %d: the access log holds the credential as %q: %s", seed, form, logs)
		}
	}
	if f, ok := containsForm([]byte(logs), secret); ok {
		t.Fatalf("seed %d: the access log holds the credential as %q: %s", seed, f, logs)
	}
}

// escapeAll percent-encodes every byte of s.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

func urlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// TestUpstreamHeaders: the upstream receives the server's request id and a W3C traceparent
// (the agent's trace id and sampled flag kept when it sent a valid one, with its tracestate;
// else a new trace), and none of the agent's Mandate-* or Txn-Token headers.
func TestUpstreamHeaders(t *testing.T) {
	e := newEnv(t)
	tok := e.token(tokenOpts{scope: "api:read"})
	const agentTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	for name, tc := range map[string]struct {
		traceparent string
		keep        bool
		flags       string
	}{
		"valid, sampled":   {"00-" + agentTrace + "-00f067aa0ba902b7-01", true, "01"},
		"valid, unsampled": {"00-" + agentTrace + "-00f067aa0ba902b7-00", true, "00"},
		"later version":    {"01-" + agentTrace + "-00f067aa0ba902b7-09-extra", true, "01"},
		"uppercase":        {"00-" + strings.ToUpper(agentTrace) + "-00f067aa0ba902b7-01", false, "00"},
		"zero trace":       {"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false, "00"},
		"version ff":       {"ff-" + agentTrace + "-00f067aa0ba902b7-01", false, "00"},
		"garbage":          {"hello", false, "00"},
		"none":             {"", false, "00"},
	} {
		t.Run(name, func(t *testing.T) {
			before := len(e.upstreamRequests())
			req := e.request("GET", "/proxy/api/items/1", tok, nil)
			if tc.traceparent != "" {
				req.Header.Set("Traceparent", tc.traceparent)
			}
			req.Header.Set("Tracestate", "vendor=opaque")
			req.Header.Set("Mandate-Request-Id", "req_forged")
			req.Header["Mandate_Principal"] = []string{"usr_forged"}
			req.Header.Set("Txn-Token", "forged.assertion.x")
			resp, body := e.do(req)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d %s", resp.StatusCode, body)
			}
			ups := e.upstreamRequests()
			if len(ups) != before+1 {
				t.Fatal("no upstream request")
			}
			h := ups[len(ups)-1].Header
			ev := e.audit.last(t)
			if got := h.Values(HeaderRequestID); len(got) != 1 || got[0] != ev.RequestID || ev.RequestID == "" {
				t.Errorf("Mandate-Request-Id %q, want the event's request id %q", got, ev.RequestID)
			}
			for k := range h {
				if l := strings.ToLower(k); (strings.HasPrefix(l, "mandate") && k != HeaderRequestID) || l == "txn-token" {
					t.Errorf("the agent's %s reached the upstream", k)
				}
			}
			tp := h.Values("Traceparent")
			if len(tp) != 1 {
				t.Fatalf("traceparent %q", tp)
			}
			id, flags, ok := parseTraceparent(tp[0])
			if !ok || len(tp[0]) != 55 || tp[0][:3] != "00-" || tp[0][53:] != tc.flags {
				t.Errorf("traceparent %q, want version 00 with flags %s", tp[0], tc.flags)
			}
			_ = flags
			kept := hex.EncodeToString(id[:]) == agentTrace
			if kept != tc.keep || strings.Contains(tp[0], "00f067aa0ba902b7") {
				t.Errorf("traceparent %q from %q: trace id kept %v, want %v, with a new parent id", tp[0], tc.traceparent, kept, tc.keep)
			}
			if got := h.Get("Tracestate"); (got != "") != tc.keep {
				t.Errorf("tracestate %q with the trace kept %v", got, tc.keep)
			}
			var pending audit.Event
			for _, x := range e.audit.all() {
				if x.RequestID == ev.RequestID && x.Outcome == audit.OutcomePending {
					pending = x
				}
			}
			if !strings.Contains(pending.Detail, "trace "+hex.EncodeToString(id[:])) {
				t.Errorf("pending detail %q lacks the trace id", pending.Detail)
			}
		})
	}
}

// FuzzTraceparent: any header parses without panic; what the proxy sends always parses, keeps
// a valid header's trace id and sampled flag, and never reuses its parent id.
func FuzzTraceparent(f *testing.F) {
	for _, s := range []string{"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		id, fl, ok := parseTraceparent(in)
		out, traceID, kept := traceparent(in, "req_x")
		oid, ofl, ook := parseTraceparent(out)
		if !ook || len(out) != 55 || hex.EncodeToString(oid[:]) != traceID || kept != ok {
			t.Fatalf("traceparent(%q) = %q %s %v", in, out, traceID, kept)
		}
		if ok && (oid != id || ofl != fl&1) {
			t.Fatalf("traceparent(%q) = %q: the trace id or sampled flag changed", in, out)
		}
		if ok && out[36:52] == strings.TrimSpace(in)[36:52] {
			t.Fatalf("traceparent(%q) = %q: the parent id is reused", in, out)
		}
	})
}

// TestAssertionRefusedWithoutSigner: an upstream that asks for an identity assertion gets no
// call when the proxy cannot sign one.
func TestAssertionRefusedWithoutSigner(t *testing.T) {
	e := newEnv(t)
	u, _ := e.upstreams.Upstream(context.Background(), "api")
	u.IdentityAssertion = true
	e.upstreams.put(u)
	resp, body := e.do(e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read"}), nil))
	if resp.StatusCode != http.StatusInternalServerError || len(e.upstreamRequests()) != 0 {
		t.Fatalf("status %d %s; upstream saw %d", resp.StatusCode, body, len(e.upstreamRequests()))
	}
}

// TestBoundText: paths and names in events are bounded, escaped and masked.
func TestBoundText(t *testing.T) {
	m := newMasker([]string{"sk_live_SECRET"})
	for _, tc := range []struct{ in, want string }{
		{"/items/1", "/items/1"},
		{"/a\x00b\nc\\d", `/a\x00b\x0ac\x5cd`},
		{"/caf\xc3\xa9/\xff", "/café/\\xff"},
		{"/k/sk_live_SECRET/x", "/k/" + strings.Repeat("*", len("sk_live_SECRET")) + "/x"},
		{strings.Repeat("a", 600), strings.Repeat("a", maxAuditPath) + "…"},
	} {
		got := boundText(tc.in, maxAuditPath, m)
		if tc.in == "/k/sk_live_SECRET/x" {
			if strings.Contains(got, "SECRET") {
				t.Errorf("boundText(%q) = %q: the credential", tc.in, got)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("boundText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	var long []string
	for i := range 40 {
		long = append(long, fmt.Sprintf("p%d=v", i))
	}
	q := auditQuery([]byte("k"), strings.Join(long, "&"), nil)
	if len(q) != maxAuditParams+1 || q[maxAuditParams].Name != "…8 more" || !slices.ContainsFunc(q, func(p audit.QueryParam) bool { return p.Name == "p0" }) {
		t.Errorf("auditQuery of 40 params: %d entries, last %+v", len(q), q[len(q)-1])
	}
}
