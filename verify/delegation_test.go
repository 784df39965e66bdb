package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/dpop"
)

// testClock is an injected clock the tests advance by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Now()} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// direct is a Verifier on an injected clock, called without a listener; its revocation feed has
// max age 1s.
type direct struct {
	t   *testing.T
	is  *testIssuer
	v   *Verifier
	clk *testClock
}

func newDirect(t *testing.T, is *testIssuer, opts ...Option) *direct {
	t.Helper()
	clk := newTestClock()
	feed := RevocationFeed(is.url+"/v1/revocations", nil, time.Second, append([]Option{WithNow(clk.Now)}, opts...)...)
	v, err := New(Config{Issuer: is.url, Audience: testAudience, Status: feed, Now: clk.Now, BaseURL: "https://rs.example"})
	if err != nil {
		t.Fatal(err)
	}
	return &direct{t: t, is: is, v: v, clk: clk}
}

// verify sends tok with a fresh proof by key through Verify.
func (d *direct) verify(a *agent, tok string) (*Caller, *Error) {
	d.t.Helper()
	p, err := dpop.NewProof(a.key, "GET", "https://rs.example/data", dpop.ProofOptions{AccessToken: tok, Now: d.clk.Now()})
	if err != nil {
		d.t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "https://rs.example/data", nil)
	r.Header.Set("Authorization", "DPoP "+tok)
	r.Header.Set("DPoP", p)
	c, err := d.v.Verify(context.Background(), r)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			d.t.Fatalf("error %T is not *Error: %v", err, err)
		}
		return nil, e
	}
	return c, nil
}

// mustAccept verifies tok and fails the test on a refusal.
func (d *direct) mustAccept(a *agent, tok, when string) *Caller {
	d.t.Helper()
	c, e := d.verify(a, tok)
	if e != nil {
		d.t.Fatalf("%s: refused %+v, want accepted", when, e)
	}
	return c
}

// threeLevels is a chain orchestrator -> planner -> res, res holding the token.
func threeLevels(res *agent) []Actor {
	return []Actor{
		{AgentID: "agt_orch", Handle: "orchestrator", DID: "did:key:z6MkOrch", InstanceJKT: "jkt-orch-instance", Task: "tsk_a"},
		{AgentID: "agt_plan", Handle: "planner", DID: "did:key:z6MkPlan", Task: "tsk_b"},
		{AgentID: res.id, Handle: "researcher", DID: "did:key:z6MkRes", InstanceJKT: res.jkt, Task: "tsk_c"},
	}
}

// chainOf returns a chain of n actors ending with holder.
func chainOf(n int, holder *agent) []Actor {
	chain := make([]Actor, n)
	for i := range chain {
		chain[i] = Actor{AgentID: fmt.Sprintf("agt_%02d", i), Handle: fmt.Sprintf("h%02d", i), DID: "did:key:z6Mk" + fmt.Sprint(i), Task: fmt.Sprintf("tsk_%02d", i)}
	}
	chain[n-1].AgentID = holder.id
	return chain
}

// delegation is the part of a Caller this file is about.
type delegation struct {
	Subject, Principal, ClientID, AgentID, Handle, DID string
	Task, Grant                                        string
	Chain                                              []Actor
	AuthorizationDetails                               []json.RawMessage
}

func delegationOf(c *Caller) delegation {
	return delegation{
		Subject: c.Subject, Principal: c.Principal, ClientID: c.ClientID, AgentID: c.AgentID,
		Handle: c.Handle, DID: c.DID, Task: c.Task, Grant: c.Grant,
		Chain: c.Chain, AuthorizationDetails: c.AuthorizationDetails,
	}
}

// jsonValue compares JSON by value, not by bytes.
var jsonValue = cmp.Transformer("json", func(r json.RawMessage) any {
	var v any
	if err := json.Unmarshal(r, &v); err != nil {
		return "invalid JSON: " + string(r)
	}
	return v
})

func TestDelegatedChain(t *testing.T) {
	is := newTestIssuer(t)
	res := newAgent(t, "agt_res")
	details := []json.RawMessage{json.RawMessage(`{"type":"repo","actions":["read"],"locations":["https://api.example/"]}`)}
	tests := map[string]struct {
		claims func() map[string]any
		want   delegation
	}{
		"three levels for a user": {
			claims: func() map[string]any { return is.delegated("usr_alice", res, threeLevels(res)...) },
			want: delegation{
				Subject: "usr_alice", Principal: "usr_alice", ClientID: res.id, AgentID: res.id,
				Handle: "researcher", DID: "did:key:z6MkRes", Task: "tsk_c", Grant: "gr_test",
				Chain:                threeLevels(res),
				AuthorizationDetails: details,
			},
		},
		"one hop for a service account": {
			claims: func() map[string]any {
				return is.delegated("svc_ci", res, Actor{AgentID: res.id, Handle: "researcher", DID: "did:key:z6MkRes", Task: "tsk_x"})
			},
			want: delegation{
				Subject: "svc_ci", Principal: "svc_ci", ClientID: res.id, AgentID: res.id,
				Handle: "researcher", DID: "did:key:z6MkRes", Task: "tsk_x", Grant: "gr_test",
				Chain:                []Actor{{AgentID: res.id, Handle: "researcher", DID: "did:key:z6MkRes", Task: "tsk_x"}},
				AuthorizationDetails: details,
			},
		},
		"self token": {
			claims: func() map[string]any { return is.claims(res) },
			want: delegation{
				Subject: res.id, ClientID: res.id, AgentID: res.id, Handle: "researcher", DID: "did:key:z6Mk-test",
				Chain: []Actor{{AgentID: res.id, Handle: "researcher", DID: "did:key:z6Mk-test"}},
			},
		},
		"no txn: the actors keep their tasks": {
			claims: func() map[string]any {
				c := is.delegated("usr_alice", res, threeLevels(res)...)
				delete(c, "txn")
				delete(c, "authorization_details")
				return c
			},
			want: delegation{
				Subject: "usr_alice", Principal: "usr_alice", ClientID: res.id, AgentID: res.id,
				Handle: "researcher", DID: "did:key:z6MkRes", Grant: "gr_test", Chain: threeLevels(res),
			},
		},
		"the deepest chain allowed": {
			claims: func() map[string]any { return is.delegated("usr_alice", res, chainOf(MaxChainDepth, res)...) },
			want: delegation{
				Subject: "usr_alice", Principal: "usr_alice", ClientID: res.id, AgentID: res.id,
				Handle: "h15", DID: "did:key:z6Mk15", Task: "tsk_15", Grant: "gr_test",
				Chain: chainOf(MaxChainDepth, res), AuthorizationDetails: details,
			},
		},
	}
	d := newDirect(t, is)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d.t = t
			c := d.mustAccept(res, is.mint("k1", "EdDSA", "at+jwt", tc.claims()), "verify")
			if diff := cmp.Diff(tc.want, delegationOf(c), jsonValue); diff != "" {
				t.Errorf("caller mismatch (-want +got):\n%s", diff)
			}
			if _, isMap := c.Claims["act"].(map[string]any); !isMap && len(c.Chain) > 1 {
				t.Errorf("Claims[act] = %T, want the decoded object kept", c.Claims["act"])
			}
		})
	}
}

func TestDelegatedMalformed(t *testing.T) {
	is := newTestIssuer(t)
	res := newAgent(t, "agt_res")
	base := func() map[string]any { return is.delegated("usr_alice", res, threeLevels(res)...) }
	outer := func(c map[string]any) map[string]any { return c["act"].(map[string]any) }
	inner := func(c map[string]any) map[string]any { return outer(c)["act"].(map[string]any) }
	tests := map[string]struct {
		mod  func(c map[string]any)
		desc string // part of the description, to tell which check refused
	}{
		"outermost act without sub":      {func(c map[string]any) { delete(outer(c), "sub") }, "has no sub"},
		"inner act without sub":          {func(c map[string]any) { delete(inner(c), "sub") }, "has no sub"},
		"innermost act with empty sub":   {func(c map[string]any) { inner(c)["act"].(map[string]any)["sub"] = "" }, "has no sub"},
		"act sub not a string":           {func(c map[string]any) { inner(c)["sub"] = 42 }, "has no sub"},
		"act a string":                   {func(c map[string]any) { c["act"] = "agt_res" }, "not an object"},
		"act an array":                   {func(c map[string]any) { c["act"] = []any{map[string]any{"sub": res.id}} }, "not an object"},
		"act null":                       {func(c map[string]any) { c["act"] = nil }, "not an object"},
		"inner act not an object":        {func(c map[string]any) { outer(c)["act"] = "agt_plan" }, "not an object"},
		"act txn not a string":           {func(c map[string]any) { inner(c)["txn"] = 7 }, "not a string"},
		"act jkt not a string":           {func(c map[string]any) { outer(c)["jkt"] = map[string]any{} }, "not a string"},
		"outermost sub is not client_id": {func(c map[string]any) { outer(c)["sub"] = "agt_other" }, "not its client_id"},
		"client_id of an inner actor":    {func(c map[string]any) { c["client_id"] = "agt_plan" }, "not its client_id"},
		"txn of a parent task":           {func(c map[string]any) { c["txn"] = "tsk_a" }, "txn is not the task"},
		"txn but no act txn":             {func(c map[string]any) { delete(outer(c), "txn") }, "txn is not the task"},
		"txn not a string":               {func(c map[string]any) { c["txn"] = 1 }, "txn claim is not a string"},
		"grant not a string":             {func(c map[string]any) { c["grant"] = []any{"gr_a"} }, "grant claim is not a string"},
		"authorization_details object":   {func(c map[string]any) { c["authorization_details"] = map[string]any{"type": "repo"} }, "not an array"},
		"authorization_details no type":  {func(c map[string]any) { c["authorization_details"] = []any{map[string]any{"actions": []any{"read"}}} }, "no type"},
		"authorization_details strings":  {func(c map[string]any) { c["authorization_details"] = []any{"repo"} }, "not all objects"},
		"chain one too deep": {func(c map[string]any) {
			deep := is.delegated("usr_alice", res, chainOf(MaxChainDepth+1, res)...)
			c["act"] = deep["act"]
		}, "deeper than 16"},
		"self token with a bad txn": {func(c map[string]any) {
			for _, k := range []string{"act", "txn", "grant", "authorization_details"} {
				delete(c, k)
			}
			c["sub"], c["txn"] = res.id, false
		}, "txn claim is not a string"},
	}
	d := newDirect(t, is)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d.t = t
			c := base()
			tc.mod(c)
			_, e := d.verify(res, is.mint("k1", "EdDSA", "at+jwt", c))
			if e == nil {
				t.Fatal("accepted, want invalid_token claims")
			}
			if got, want := (refusal{e.Status, e.Code, e.Reason}), (refusal{401, "invalid_token", "claims"}); got != want {
				t.Fatalf("refusal %+v (%s), want %+v", got, e.Description, want)
			}
			if !strings.Contains(e.Description, tc.desc) {
				t.Errorf("description %q, want it to mention %q", e.Description, tc.desc)
			}
		})
	}
}

func TestRevocationKinds(t *testing.T) {
	tests := map[string]struct {
		self   bool   // a self token rather than the three-level chain
		kind   string // the revocation entry
		id     func(claims map[string]any) string
		refuse string // the refusal's description; "" = still accepted
	}{
		"agent in the middle of the chain": {kind: "agent", id: fixed("agt_plan"), refuse: "agent agt_plan is revoked"},
		"first agent of the chain":         {kind: "agent", id: fixed("agt_orch"), refuse: "agent agt_orch is revoked"},
		"current agent":                    {kind: "agent", id: fixed("agt_res"), refuse: "agent agt_res is revoked"},
		"grant":                            {kind: "grant", id: fixed("gr_test"), refuse: "grant gr_test is revoked"},
		"parent task in the chain":         {kind: "task", id: fixed("tsk_a"), refuse: "task tsk_a has ended or was revoked"},
		"middle task in the chain":         {kind: "task", id: fixed("tsk_b"), refuse: "task tsk_b has ended or was revoked"},
		"current task":                     {kind: "task", id: fixed("tsk_c"), refuse: "task tsk_c has ended or was revoked"},
		"token":                            {kind: "token", id: claim("jti"), refuse: "token {jti} is revoked"},
		"self token: the agent":            {self: true, kind: "agent", id: fixed("agt_res"), refuse: "agent agt_res is revoked"},
		"self token: the token":            {self: true, kind: "token", id: claim("jti"), refuse: "token {jti} is revoked"},
		"another agent":                    {kind: "agent", id: fixed("agt_else")},
		"another task":                     {kind: "task", id: fixed("tsk_else")},
		"the principal as an agent":        {kind: "agent", id: fixed("usr_alice")},
		"the grant id as a token":          {kind: "token", id: fixed("gr_test")},
		"the key the token is bound to":    {kind: "key", id: jktClaim, refuse: "the key {jkt} the token is bound to is revoked"},
		"another key":                      {kind: "key", id: fixed("not-this-jkt")},
		"an unknown kind":                  {kind: "certificate", id: fixed("agt_res")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			is := newTestIssuer(t)
			res := newAgent(t, "agt_res")
			d := newDirect(t, is)
			claims := is.delegated("usr_alice", res, threeLevels(res)...)
			if tc.self {
				claims = is.claims(res)
			}
			tok := is.mint("k1", "EdDSA", "at+jwt", claims)
			d.mustAccept(res, tok, "before the revocation")

			is.revoke(tc.kind, tc.id(claims), time.Now().Add(time.Hour).Unix())
			d.mustAccept(res, tok, "within max age, from the cached feed")
			d.clk.Advance(1100 * time.Millisecond)
			_, e := d.verify(res, tok)
			if tc.refuse == "" {
				if e != nil {
					t.Fatalf("refused %+v, want accepted", e)
				}
				return
			}
			want := strings.ReplaceAll(tc.refuse, "{jti}", claims["jti"].(string))
			want = strings.ReplaceAll(want, "{jkt}", jktClaim(claims))
			if e == nil {
				t.Fatalf("accepted after one refresh, want refused: %s", want)
			}
			if got := (refusal{e.Status, e.Code, e.Reason}); got != (refusal{401, "invalid_token", "revoked"}) {
				t.Fatalf("refusal %+v, want 401 invalid_token revoked", got)
			}
			if e.Description != want {
				t.Errorf("description %q, want %q", e.Description, want)
			}
		})
	}
}

func fixed(id string) func(map[string]any) string { return func(map[string]any) string { return id } }

func claim(k string) func(map[string]any) string {
	return func(c map[string]any) string { return c[k].(string) }
}

// feedCaller is a caller with one agent and a task, for feed-level tests.
func feedCaller(agentID string) *Caller {
	return &Caller{
		Subject: agentID, ClientID: agentID, AgentID: agentID, JTI: "at_" + agentID,
		Chain: []Actor{{AgentID: agentID}},
	}
}

func TestRevocationFeedPaging(t *testing.T) {
	is := newTestIssuer(t)
	is.pageSize = 2
	clk := newTestClock()
	f := RevocationFeed(is.url+"/v1/revocations", nil, time.Second, WithNow(clk.Now))
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		is.revokeAgent(fmt.Sprintf("agt_%d", i))
	}

	// One Check reads every page, at once.
	for i := 1; i <= 5; i++ {
		if err := f.Check(ctx, feedCaller(fmt.Sprintf("agt_%d", i))); !errors.Is(err, ErrRevoked) {
			t.Fatalf("agt_%d: err = %v, want ErrRevoked", i, err)
		}
	}
	if err := f.Check(ctx, feedCaller("agt_9")); err != nil {
		t.Fatalf("agt_9: %v", err)
	}
	if diff := cmp.Diff([]int64{0, 2, 4}, is.feedAfters()); diff != "" {
		t.Fatalf("feed requests (-want +got):\n%s", diff)
	}

	// The next refresh starts from the cursor: only the new entries.
	for i := 6; i <= 8; i++ {
		is.revokeAgent(fmt.Sprintf("agt_%d", i))
	}
	clk.Advance(1100 * time.Millisecond)
	if err := f.Check(ctx, feedCaller("agt_8")); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agt_8: err = %v, want ErrRevoked", err)
	}
	if err := f.Check(ctx, feedCaller("agt_1")); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agt_1 after a refresh: err = %v, want ErrRevoked", err)
	}
	if diff := cmp.Diff([]int64{5, 7}, is.feedAfters()); diff != "" {
		t.Fatalf("feed requests (-want +got):\n%s", diff)
	}

	// A refresh with nothing new is one request.
	clk.Advance(1100 * time.Millisecond)
	if err := f.Check(ctx, feedCaller("agt_9")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int64{8}, is.feedAfters()); diff != "" {
		t.Fatalf("feed requests (-want +got):\n%s", diff)
	}

	// A page that fails keeps what the pages before it brought, and the cursor.
	for i := 9; i <= 12; i++ {
		is.revokeAgent(fmt.Sprintf("agt_%d", i))
	}
	is.mu.Lock()
	is.feedFailAt = 10
	is.mu.Unlock()
	clk.Advance(1100 * time.Millisecond)
	if err := f.Check(ctx, feedCaller("agt_10")); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agt_10, read before the failing page: err = %v, want ErrRevoked", err)
	}
	if err := f.Check(ctx, feedCaller("agt_11")); err != nil {
		t.Fatalf("agt_11, within max stale: err = %v, want nil from the last copy", err)
	}
	if diff := cmp.Diff([]int64{8, 10}, is.feedAfters()); diff != "" {
		t.Fatalf("feed requests (-want +got):\n%s", diff)
	}
	is.mu.Lock()
	is.feedFailAt = 0
	is.mu.Unlock()
	clk.Advance(1100 * time.Millisecond)
	if err := f.Check(ctx, feedCaller("agt_12")); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agt_12: err = %v, want ErrRevoked", err)
	}
	if diff := cmp.Diff([]int64{10}, is.feedAfters()); diff != "" {
		t.Fatalf("feed requests after the failure (-want +got):\n%s", diff)
	}
}

func TestRevocationFeedStuckCursor(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		writeJSON(w, map[string]any{"revocations": []any{}, "cursor": 3, "more": true})
	}))
	t.Cleanup(srv.Close)
	f := RevocationFeed(srv.URL, nil, time.Second, WithoutStream()) // counts polls
	ctx := context.Background()
	err := f.Check(ctx, feedCaller("agt_a"))
	if err == nil || errors.Is(err, ErrRevoked) {
		t.Fatalf("err = %v, want an unavailable error", err)
	}
	if got := hits.Load(); got != 2 {
		t.Fatalf("%d requests, want 2 (after=0, then after=3 which did not advance)", got)
	}
}

func TestRevocationFeedExpiry(t *testing.T) {
	is := newTestIssuer(t)
	clk := newTestClock()
	ff := RevocationFeed(is.url+"/v1/revocations", nil, time.Second, WithNow(clk.Now))
	f := ff.(*feed)
	ctx := context.Background()
	now := clk.Now().Unix()
	is.revoke("token", "at_soon", now+10)
	is.revoke("agent", "agt_forever", 0)
	is.revoke("grant", "gr_long_gone", now-int64(defaultRetain/time.Second)-60)
	tok := &Caller{JTI: "at_soon"}
	forever := feedCaller("agt_forever")
	gone := &Caller{Grant: "gr_long_gone"}

	if err := f.Check(ctx, tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("at_soon: err = %v, want ErrRevoked", err)
	}
	if err := f.Check(ctx, gone); err != nil {
		t.Fatalf("an entry long past its exp: err = %v, want nil", err)
	}
	if n := len(f.snap.Load().sets[kindGrant]); n != 0 {
		t.Fatalf("%d grants kept, want none: the entry was past its exp when read", n)
	}

	// Past exp, but a verifier still accepts the token within its leeway: keep refusing.
	clk.Advance(time.Minute)
	if err := f.Check(ctx, tok); !errors.Is(err, ErrRevoked) {
		t.Fatalf("at_soon just past exp: err = %v, want ErrRevoked", err)
	}

	clk.Advance(defaultRetain)
	if err := f.Check(ctx, tok); err != nil {
		t.Fatalf("at_soon past exp and retention: err = %v, want nil", err)
	}
	if err := f.Check(ctx, forever); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agt_forever (exp 0): err = %v, want ErrRevoked", err)
	}
	s := f.snap.Load()
	if n := len(s.sets[kindToken]); n != 0 || s.nextExp != 0 {
		t.Fatalf("tokens kept %d, nextExp %d; want the expired entry dropped", n, s.nextExp)
	}
	if n := len(s.sets[kindAgent]); n != 1 {
		t.Fatalf("agents kept %d, want 1", n)
	}
}

func TestVerifierRetainsRevocationsForItsLeeway(t *testing.T) {
	for leeway, want := range map[time.Duration]time.Duration{0: defaultRetain, 10 * time.Minute: 11 * time.Minute} {
		v, err := New(Config{Issuer: "https://issuer.example", Audience: testAudience, Leeway: leeway})
		if err != nil {
			t.Fatal(err)
		}
		if got := v.status.(*feed).o.retain; got != want {
			t.Errorf("Leeway %v: revocations retained %v past exp, want %v", leeway, got, want)
		}
	}
}

func TestRevocationFeedFailsClosedAfterMaxStale(t *testing.T) {
	is := newTestIssuer(t)
	res := newAgent(t, "agt_res")
	d := newDirect(t, is, WithMaxStale(30*time.Second))
	good := is.mint("k1", "EdDSA", "at+jwt", is.delegated("usr_alice", res, threeLevels(res)...))
	badClaims := is.delegated("usr_alice", res, threeLevels(res)...)
	bad := is.mint("k1", "EdDSA", "at+jwt", badClaims)
	d.mustAccept(res, good, "feed up")
	is.revokeJTI(badClaims["jti"].(string))
	d.clk.Advance(1100 * time.Millisecond)
	if _, e := d.verify(res, bad); e == nil || e.Reason != "revoked" {
		t.Fatalf("revoked token: %+v, want revoked", e)
	}

	// The feed goes down: answers come from the cached copy for up to 30s after it was read.
	is.setFailing(false, true)
	d.clk.Advance(20 * time.Second)
	d.mustAccept(res, good, "20s into the outage")
	if _, e := d.verify(res, bad); e == nil || e.Reason != "revoked" {
		t.Fatalf("revoked token during the outage: %+v, want revoked from the cache", e)
	}
	d.clk.Advance(10 * time.Second)
	for name, tok := range map[string]string{"good": good, "revoked": bad} {
		_, e := d.verify(res, tok)
		if e == nil {
			t.Fatalf("%s token 30s+ into the outage: accepted, want 503", name)
		}
		if got := (refusal{e.Status, e.Code, e.Reason}); got != (refusal{503, "temporarily_unavailable", "status_unavailable"}) {
			t.Fatalf("%s token 30s+ into the outage: %+v, want 503 status_unavailable", name, got)
		}
	}

	// Back up.
	is.setFailing(false, false)
	d.clk.Advance(1100 * time.Millisecond)
	d.mustAccept(res, good, "feed back")
	if _, e := d.verify(res, bad); e == nil || e.Reason != "revoked" {
		t.Fatalf("revoked token after the outage: %+v, want revoked", e)
	}
}

func TestRevocationFeedConcurrent(t *testing.T) {
	is := newTestIssuer(t)
	is.pageSize = 3
	clk := newTestClock()
	f := RevocationFeed(is.url+"/v1/revocations", nil, time.Second, WithNow(clk.Now))
	ctx := context.Background()
	if err := f.Check(ctx, feedCaller("agt_x")); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 5; round++ {
		for i := 0; i < 4; i++ {
			is.revoke("task", fmt.Sprintf("tsk_%d_%d", round, i), 0)
		}
		clk.Advance(1100 * time.Millisecond)
		is.feedAfters()
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := feedCaller("agt_x")
				c.Task = fmt.Sprintf("tsk_%d_%d", round, g%4)
				if err := f.Check(ctx, c); !errors.Is(err, ErrRevoked) {
					t.Errorf("round %d: err = %v, want ErrRevoked", round, err)
				}
			}()
		}
		wg.Wait()
		// One refresh for all 16 callers: two pages of the four new entries.
		if got := len(is.feedAfters()); got != 2 {
			t.Fatalf("round %d: %d feed requests, want 2 (one coalesced refresh)", round, got)
		}
	}
}

// jktClaim reads cnf.jkt, the key a token is bound to.
func jktClaim(claims map[string]any) string {
	cnf, _ := claims["cnf"].(map[string]any)
	jkt, _ := cnf["jkt"].(string)
	return jkt
}
