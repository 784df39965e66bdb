package server_test

import (
	"crypto"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
)

// upstreamAPI is a local third-party API that accepts only its real key.
type upstreamAPI struct {
	srv     *httptest.Server
	key     string
	calls   atomic.Int64
	streamC chan struct{} // closed to let a long response finish
}

func newUpstreamAPI(t *testing.T) *upstreamAPI {
	u := &upstreamAPI{key: "sk_live_" + randomID(), streamC: make(chan struct{})}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+u.key {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		u.calls.Add(1)
		if r.URL.Path == "/v1/stream" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			for i := 0; ; i++ {
				select {
				case <-u.streamC:
					return
				case <-r.Context().Done():
					return
				case <-time.After(10 * time.Millisecond):
					fmt.Fprintf(w, "chunk %d\n", i)
					w.(http.Flusher).Flush()
				}
			}
		}
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}))
	t.Cleanup(func() {
		select {
		case <-u.streamC:
		default:
			close(u.streamC)
		}
		u.srv.Close()
	})
	return u
}

// proxyFixture: an upstream in the vault, an agent with a grant on it, and a task token.
type proxyFixture struct {
	ts      *testServer
	up      *upstreamAPI
	agent   *testAgent
	grantID string
	tok     string
	key     crypto.Signer
}

func newProxyFixture(t *testing.T, budget map[string]int64) *proxyFixture {
	ts := newTestServer(t)
	up := addItemsUpstream(t, ts)
	a := ts.newAgent(t, "caller", true)
	g := map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"}}
	if budget != nil {
		g["budget"] = budget
	}
	f := &proxyFixture{ts: ts, up: up, agent: a, grantID: ts.grant(t, g), key: a.Key}
	f.tok = ts.startTask(t, a, ts.grantToken(t, a, f.grantID))
	return f
}

// call sends one proxied GET with a fresh proof; it returns the response, body unread.
func (f *proxyFixture) call(t *testing.T, path string) *http.Response {
	t.Helper()
	resp, err := f.ts.HC.Do(f.ts.dpopRequest(t, f.key, f.tok, "GET", f.ts.URL+"/proxy/items"+path, nil))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// dpopRequest is a request to u with the access token tok and a fresh DPoP proof by key.
func (ts *testServer) dpopRequest(t testing.TB, key crypto.Signer, tok, method, u string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	p, err := dpop.NewProof(key, method, u, dpop.ProofOptions{AccessToken: tok, Now: ts.Clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", p)
	return req
}

func (f *proxyFixture) status(t *testing.T, path string) int {
	resp := f.call(t, path)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestProxyThroughServer: the proxy on the real server with the real store: exactly the budget
// succeeds under 50 concurrent calls; an ended task stops the next request even while one of its
// responses is still streaming; a revoked grant stops the task's calls; each refusal is audited.
func TestProxyThroughServer(t *testing.T) {
	t.Run("budget under 50 concurrent calls", func(t *testing.T) {
		f := newProxyFixture(t, map[string]int64{"calls": 10})
		var ok, refused atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch s := f.status(t, "/v1/items"); s {
				case 200:
					ok.Add(1)
				case 429:
					refused.Add(1)
				default:
					t.Errorf("status %d", s)
				}
			}()
		}
		wg.Wait()
		if ok.Load() != 10 || refused.Load() != 40 || f.up.calls.Load() != 10 {
			t.Fatalf("ok %d refused %d upstream saw %d, want 10/40/10", ok.Load(), refused.Load(), f.up.calls.Load())
		}
		f.ts.Srv.Proxy().Wait(t.Context())
		evs, _ := f.ts.Srv.Store().ListEvents(t.Context(), auditFilter("proxy.call"))
		outcomes := map[audit.Outcome]int{}
		for _, ev := range evs {
			outcomes[ev.Outcome]++
		}
		// One event per call, and a pending record before each of the 10 that were forwarded.
		if want := map[audit.Outcome]int{audit.OutcomePending: 10, audit.OutcomeSuccess: 10, audit.OutcomeDenied: 40}; !maps.Equal(outcomes, want) {
			t.Errorf("proxy.call audit events by outcome %v, want %v", outcomes, want)
		}
	})
	t.Run("task ended while a response streams", func(t *testing.T) {
		f := newProxyFixture(t, nil)
		resp := f.call(t, "/v1/stream")
		if resp.StatusCode != 200 {
			t.Fatalf("stream: %d", resp.StatusCode)
		}
		buf := make([]byte, 8)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatalf("first chunk: %v", err)
		}
		f.ts.adminPost(t, "/v1/tasks/"+taskOf(t, f.tok)+"/end")
		if s := f.status(t, "/v1/items"); s != 401 {
			t.Errorf("next request after the task ended: %d, want 401", s)
		}
		close(f.up.streamC)
		resp.Body.Close()
	})
	t.Run("revoked grant", func(t *testing.T) {
		f := newProxyFixture(t, nil)
		if s := f.status(t, "/v1/items"); s != 200 {
			t.Fatalf("before: %d", s)
		}
		f.ts.adminPost(t, "/v1/grants/"+f.grantID+"/revoke")
		if s := f.status(t, "/v1/items"); s != 401 {
			t.Errorf("after the grant was revoked: %d, want 401", s)
		}
		f.ts.Srv.Proxy().Wait(t.Context())
		evs, _ := f.ts.Srv.Store().ListEvents(t.Context(), auditFilter("proxy.call"))
		// Newest first: the refusal, attributed to the agent, its principal, task and grant;
		// then the call before it (its completion and pending record).
		if len(evs) != 3 || evs[0].Outcome != audit.OutcomeDenied || evs[0].AgentID != f.agent.ID ||
			evs[0].PrincipalID == "" || evs[0].TaskID != taskOf(t, f.tok) || evs[0].GrantID != f.grantID {
			t.Errorf("proxy.call events %+v: want the refusal recorded as the agent's", evs)
		}
	})
	t.Run("the key never leaves the server", func(t *testing.T) {
		f := newProxyFixture(t, nil)
		resp := f.call(t, "/v1/items")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		all := string(body)
		for k, v := range resp.Header {
			all += k + strings.Join(v, "")
		}
		if strings.Contains(all, f.up.key) {
			t.Fatal("the upstream key reached the agent")
		}
	})
}

// TestProxyBudgetAcrossSubdelegation: children hold a copy of their parent's budget, but a call
// counts against the grant's total and every task above it too, so handing out children never
// multiplies the grant's budget.
func TestProxyBudgetAcrossSubdelegation(t *testing.T) {
	ts := newTestServer(t)
	up := addItemsUpstream(t, ts)
	orch := ts.newAgent(t, "budget-orch", true)
	g := ts.grant(t, map[string]any{"agent": orch.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"},
		"budget": map[string]int64{"calls": 1}, "allow_subdelegation": true, "max_depth": 2})
	parent := ts.startTask(t, orch, ts.grantToken(t, orch, g))
	statuses := []int{}
	for i := 0; i < 3; i++ {
		child := ts.newAgent(t, fmt.Sprintf("budget-child-%d", i), true)
		resp, out := ts.exchange(t, orch.Key, url.Values{"subject_token": {parent}, "subject_token_type": {tokenTypeAccess},
			"actor_token": {ts.actorToken(t, child.Key, child.DID, nil)}, "actor_token_type": {tokenTypeJWT}})
		if resp.StatusCode != 200 {
			t.Fatalf("delegate: %d %v", resp.StatusCode, out)
		}
		f := &proxyFixture{ts: ts, up: up, agent: child, tok: out["access_token"].(string), key: child.Key}
		statuses = append(statuses, f.status(t, "/v1/items"))
	}
	if statuses[0] != 200 || statuses[1] != 429 || statuses[2] != 429 || up.calls.Load() != 1 {
		t.Fatalf("children's calls %v, upstream saw %d; want one success in all (the grant's budget is 1)", statuses, up.calls.Load())
	}
}
