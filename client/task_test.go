package client

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/dpop"
)

// fakeJWT is a token shaped like the server's (the client reads its claims, never its signature).
func fakeJWT(claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","typ":"at+jwt"}`))
	b, _ := json.Marshal(claims)
	return h + "." + base64.RawURLEncoding.EncodeToString(b) + ".c2ln"
}

func peek(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func thumbprint(t *testing.T, key crypto.Signer) string {
	t.Helper()
	jkt, err := dpop.Thumbprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return jkt
}

// exchange is one token exchange the fake server saw.
type exchange struct {
	Form     url.Values
	ProofJKT string
	Actor    map[string]any // the verified actor token's claims
	ActorKID string
}

// delegationServer adds the token exchange and the agent routes to a fakeServer: it checks each
// exchange's DPoP proof against the subject token's cnf.jkt and its actor token's signature and
// claims, and issues task tokens with txn, grant, scope and cnf.
type delegationServer struct {
	*fakeServer
	t        *testing.T
	agentJKT string

	mu        sync.Mutex
	exchanges []exchange
	hits      int // token exchange requests, refused ones included
	tasks     int
	ended     []string
	requests  []map[string]any
	polls     []string // the answers to the polls, in order
	agentAuth *dpop.Checker
}

func newDelegationServer(t *testing.T) (*delegationServer, crypto.Signer) {
	key := mustKey(t)
	did, _ := DID(key)
	fs := newFakeServer(t, did, newClock())
	ds := &delegationServer{fakeServer: fs, t: t, agentJKT: thumbprint(t, key),
		agentAuth: dpop.NewChecker(dpop.Config{Replay: dpop.NewMemoryReplayStore(), Now: fs.clock.Now})}
	fs.exchange = ds.exchange
	fs.mux.HandleFunc("GET /v1/agent/grants", ds.agent(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"grants": []any{map[string]any{
			"grant_id": "gr_1", "principal_id": "usr_1", "agent_id": fs.agentID, "scopes": []string{"repo:read", "repo:write"},
			"resources": []string{"https://api.example/"}, "max_task_ttl": 3600, "max_token_ttl": 300, "max_depth": 2,
			"allow_subdelegation": true, "budget": map[string]int64{"requests": 100}, "status": "active",
			"created_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-31T00:00:00Z",
			"grant_token": fakeJWT(map[string]any{"jti": "gr_1", "cnf": map[string]string{"jkt": ds.agentJKT}}),
		}}})
	}))
	fs.mux.HandleFunc("POST /v1/agent/grant-requests", ds.agent(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			oauthError(w, 400, "invalid_request", err.Error())
			return
		}
		ds.mu.Lock()
		ds.requests = append(ds.requests, body)
		ds.mu.Unlock()
		writeJSON(w, 201, map[string]any{"request_id": "grq_1", "status": "pending", "interval": 5})
	}))
	fs.mux.HandleFunc("GET /v1/agent/grant-requests/{id}", ds.agent(func(w http.ResponseWriter, r *http.Request) {
		ds.mu.Lock()
		if len(ds.polls) == 0 {
			ds.mu.Unlock()
			oauthError(w, 500, "server_error", "polled once too often")
			return
		}
		answer := ds.polls[0]
		ds.polls = ds.polls[1:]
		ds.mu.Unlock()
		if answer != "approved" {
			oauthError(w, 400, answer, "poll answer "+answer)
			return
		}
		writeJSON(w, 200, map[string]any{"grant_id": "gr_2", "scopes": []string{"repo:read"}, "max_task_ttl": 600,
			"status": "active", "request_id": r.PathValue("id"), "grant_token": "gt"})
	}))
	fs.mux.HandleFunc("POST /v1/agent/tasks/{id}/end", ds.agent(func(w http.ResponseWriter, r *http.Request) {
		ds.mu.Lock()
		ds.ended = append(ds.ended, r.PathValue("id"))
		ds.mu.Unlock()
		writeJSON(w, 200, map[string]any{"task_id": r.PathValue("id"), "status": "completed"})
	}))
	return ds, key
}

// agent guards an agent route: the agent's own token (at_N_<jkt>) with a proof by its key.
func (ds *delegationServer) agent(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "DPoP ")
		if !ok || !strings.HasSuffix(tok, "_"+ds.agentJKT) {
			oauthError(w, 401, "invalid_token", "no agent token")
			return
		}
		if _, err := ds.agentAuth.Check(r.Context(), r.Header.Get("DPoP"), dpop.Request{
			Method: r.Method, URL: ds.url + r.URL.Path, AccessToken: tok, JKT: ds.agentJKT}); err != nil {
			oauthError(w, 401, "invalid_token", err.Error())
			return
		}
		h(w, r)
	}
}

func (ds *delegationServer) exchange(w http.ResponseWriter, r *http.Request) {
	ds.mu.Lock()
	ds.hits++
	ds.mu.Unlock()
	f := r.PostForm
	var subject struct {
		Txn   string `json:"txn"`
		Grant string `json:"grant"`
		JTI   string `json:"jti"`
		Scope string `json:"scope"`
		Cnf   struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
	}
	parts := strings.Split(f.Get("subject_token"), ".")
	if len(parts) != 3 {
		oauthError(w, 400, "invalid_request", "subject_token")
		return
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if err := json.Unmarshal(b, &subject); err != nil {
		oauthError(w, 400, "invalid_request", "subject_token claims")
		return
	}
	p, err := ds.checkerFor().Check(r.Context(), r.Header.Get("DPoP"), dpop.Request{Method: "POST", URL: ds.url + "/oauth/token", JKT: subject.Cnf.JKT})
	var de *dpop.Error
	if errors.As(err, &de) {
		if de.Code == dpop.CodeUseNonce {
			w.Header().Set("DPoP-Nonce", ds.nonces.Current())
		}
		oauthError(w, 400, de.Code, de.Description)
		return
	}
	if err != nil {
		oauthError(w, 500, "server_error", err.Error())
		return
	}
	if ds.nonces != nil {
		w.Header().Set("DPoP-Nonce", ds.nonces.Current())
	}
	x := exchange{Form: f, ProofJKT: p.JKT}
	bind := p.JKT
	if act := f.Get("actor_token"); act != "" {
		kid, claims, err := verifyJWS(act, "JWT")
		if err != nil {
			oauthError(w, 400, "invalid_request", "actor_token: "+err.Error())
			return
		}
		now := ds.clock.Now().Unix()
		exp, iat := claims["exp"].(float64), claims["iat"].(float64)
		if claims["iss"] != kid || claims["aud"] != ds.url || int64(exp) <= now || exp-iat > 300 || claims["jti"] == "" {
			oauthError(w, 400, "invalid_request", fmt.Sprintf("actor_token claims %v", claims))
			return
		}
		pub, _ := didkey.Parse(kid)
		bind, _ = dpop.Thumbprint(pub)
		x.Actor, x.ActorKID = claims, kid
	}
	// A grant token starts a task; a task token with an actor token hands on a child task;
	// without one it is refreshed.
	txn, grant := subject.Txn, subject.Grant
	if f.Get("subject_token_type") == tokenTypeJWT {
		grant = subject.JTI
	}
	ds.mu.Lock()
	ds.exchanges = append(ds.exchanges, x)
	if f.Get("subject_token_type") == tokenTypeJWT || x.Actor != nil && f.Get("subject_token_type") == tokenTypeAccessToken {
		ds.tasks++
		txn = fmt.Sprintf("tsk_%d", ds.tasks)
	}
	ds.mu.Unlock()
	scope := f.Get("scope")
	if scope == "" {
		scope = subject.Scope
	}
	if scope == "" {
		scope = "repo:read repo:write"
	}
	now := ds.clock.Now()
	writeJSON(w, 200, map[string]any{
		"access_token": fakeJWT(map[string]any{"txn": txn, "grant": grant, "scope": scope, "iat": now.Unix(),
			"exp": now.Add(time.Duration(ds.expiresIn) * time.Second).Unix(), "cnf": map[string]string{"jkt": bind}, "jti": randomID()}),
		"issued_token_type": tokenTypeAccessToken, "token_type": "DPoP", "expires_in": ds.expiresIn, "scope": scope,
	})
}

func (ds *delegationServer) last() exchange {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.exchanges[len(ds.exchanges)-1]
}

func (ds *delegationServer) source(t *testing.T, key crypto.Signer) *TokenSource {
	t.Helper()
	ts, err := NewTokenSource(Config{Issuer: ds.url, AgentID: ds.agentID, Key: key, Now: ds.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestGrants(t *testing.T) {
	ds, key := newDelegationServer(t)
	grants, err := ds.source(t, key).Grants(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(grants) != 1 {
		t.Fatalf("grants = %+v", grants)
	}
	g := grants[0]
	g.Token = ""
	want := Grant{ID: "gr_1", PrincipalID: "usr_1", AgentID: ds.agentID, Scopes: []string{"repo:read", "repo:write"},
		Resources: []string{"https://api.example/"}, Limits: Limits{MaxTaskTTL: time.Hour, MaxTokenTTL: 5 * time.Minute, MaxDepth: 2,
			AllowSubdelegation: true, Budget: map[string]int64{"requests": 100}}, Status: "active",
		CreatedAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), ExpiresAt: time.Date(2030, 1, 31, 0, 0, 0, 0, time.UTC)}
	if diff := cmp.Diff(want, g); diff != "" {
		t.Errorf("grant (-want +got):\n%s", diff)
	}
	if grants[0].Token == "" {
		t.Error("no grant token")
	}
}

func TestNewActorToken(t *testing.T) {
	key := mustKey(t)
	did, _ := DID(key)
	before := time.Now().Unix()
	tok, err := NewActorToken(key, "https://mandate.example")
	if err != nil {
		t.Fatal(err)
	}
	kid, claims, err := verifyJWS(tok, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	if kid != did || claims["iss"] != did || claims["aud"] != "https://mandate.example" {
		t.Errorf("kid %s claims %v, want kid = iss = %s", kid, claims, did)
	}
	iat, exp := int64(claims["iat"].(float64)), int64(claims["exp"].(float64))
	if iat < before || exp-iat != 60 {
		t.Errorf("iat %d exp %d: want now and now+60s", iat, exp)
	}
	if jti, _ := claims["jti"].(string); len(jti) < 16 {
		t.Errorf("jti %q", jti)
	}
	again, _ := NewActorToken(key, "https://mandate.example")
	if _, c2, _ := verifyJWS(again, "JWT"); c2["jti"] == claims["jti"] {
		t.Error("two actor tokens share a jti")
	}
}

func TestStartTask(t *testing.T) {
	ctx := context.Background()
	t.Run("on the agent's key, with the nonce retry", func(t *testing.T) {
		ds, key := newDelegationServer(t)
		ds.nonces = dpop.NewNonces(bytes.Repeat([]byte{5}, 32), 10*time.Minute, ds.clock.Now)
		g, err := ds.source(t, key).Grant(ctx, "gr_1")
		if err != nil {
			t.Fatal(err)
		}
		task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{
			Purpose: "triage", Scopes: []string{"repo:read"}, Resources: []string{"https://api.example/"},
			AuthorizationDetails: []json.RawMessage{json.RawMessage(`{"type":"repo","repos":["acme/web"]}`)},
			TTL:                  15 * time.Minute, Budget: map[string]int64{"requests": 10},
		})
		if err != nil {
			t.Fatal(err)
		}
		if ds.hits != 2 {
			t.Errorf("exchange requests: %d, want 2 (use_dpop_nonce, then the retry)", ds.hits)
		}
		x := ds.last()
		want := url.Values{
			"grant_type": {grantTypeTokenExchange}, "subject_token": {g.Token}, "subject_token_type": {tokenTypeJWT},
			"purpose": {"triage"}, "scope": {"repo:read"}, "resource": {"https://api.example/"},
			"authorization_details": {`[{"type":"repo","repos":["acme/web"]}]`}, "task_ttl": {"900"}, "budget": {`{"requests":10}`},
		}
		if diff := cmp.Diff(want, x.Form); diff != "" {
			t.Errorf("exchange form (-want +got):\n%s", diff)
		}
		if x.ProofJKT != ds.agentJKT {
			t.Errorf("proof by %s, want the agent's key %s", x.ProofJKT, ds.agentJKT)
		}
		if task.ID != "tsk_1" || task.GrantID != "gr_1" || thumbprint(t, task.Key) != ds.agentJKT {
			t.Errorf("task %s grant %s key %v", task.ID, task.GrantID, task.Key)
		}
		cur := task.Current()
		if cur.Scope != "repo:read" || cur.ExpiresAt.Sub(cur.IssuedAt) != 300*time.Second {
			t.Errorf("token %+v", cur)
		}
		if c := peek(t, cur.AccessToken); c["cnf"].(map[string]any)["jkt"] != ds.agentJKT {
			t.Errorf("bound to %v", c["cnf"])
		}
	})

	t.Run("on an instance key", func(t *testing.T) {
		ds, key := newDelegationServer(t)
		g, err := ds.source(t, key).Grant(ctx, "gr_1")
		if err != nil {
			t.Fatal(err)
		}
		inst := mustKey(t)
		instDID, _ := DID(inst)
		task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{Purpose: "one run", InstanceKey: inst})
		if err != nil {
			t.Fatal(err)
		}
		x := ds.last()
		if x.ProofJKT != ds.agentJKT {
			t.Errorf("proof by %s, want the agent's key (the grant token's)", x.ProofJKT)
		}
		if x.Form.Get("actor_token_type") != tokenTypeJWT || x.ActorKID != instDID || x.Actor["iss"] != instDID || x.Actor["aud"] != ds.url {
			t.Errorf("actor token kid %s claims %v", x.ActorKID, x.Actor)
		}
		for _, k := range []string{"scope", "resource", "task_ttl", "budget", "authorization_details"} {
			if x.Form.Has(k) {
				t.Errorf("%s sent though not asked for", k)
			}
		}
		if thumbprint(t, task.Key) != thumbprint(t, inst) {
			t.Error("task key is not the instance key")
		}
		if c := peek(t, task.Current().AccessToken); c["cnf"].(map[string]any)["jkt"] != thumbprint(t, inst) {
			t.Errorf("bound to %v, want the instance key", c["cnf"])
		}
	})

	t.Run("refusals", func(t *testing.T) {
		ds, key := newDelegationServer(t)
		if _, err := StartTask(ctx, nil, ds.url, key, "", TaskRequest{}); err == nil {
			t.Error("no grant token accepted")
		}
		if _, err := StartTask(ctx, nil, ds.url, key, "a.b.c", TaskRequest{TTL: time.Millisecond}); err == nil || !strings.Contains(err.Error(), "TTL") {
			t.Errorf("sub-second TTL: %v", err)
		}
		// A grant token bound to another key: the server refuses the proof.
		other := fakeJWT(map[string]any{"jti": "gr_1", "cnf": map[string]string{"jkt": "someone-else"}})
		_, err := StartTask(ctx, nil, ds.url, key, other, TaskRequest{})
		var e *Error
		if !errors.As(err, &e) || e.Code != "invalid_dpop_proof" {
			t.Errorf("err = %v, want invalid_dpop_proof", err)
		}
	})
}

func TestTaskTransportRefreshes(t *testing.T) {
	ctx := context.Background()
	ds, key := newDelegationServer(t)
	g, err := ds.source(t, key).Grant(ctx, "gr_1")
	if err != nil {
		t.Fatal(err)
	}
	inst := mustKey(t)
	task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{InstanceKey: inst})
	if err != nil {
		t.Fatal(err)
	}
	task.now = ds.clock.Now
	first := task.Current().AccessToken
	rs := newResourceServer(t, thumbprint(t, inst), nil)
	rs.checker = dpop.NewChecker(dpop.Config{Replay: dpop.NewMemoryReplayStore(), Now: ds.clock.Now})
	hc := &http.Client{Transport: task.Transport(nil)}
	get := func() {
		t.Helper()
		resp, err := hc.Get(rs.srv.URL + "/data")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET: %d %s", resp.StatusCode, body)
		}
	}
	get()
	ds.clock.Advance(190 * time.Second) // 110s of 300s left: more than a third
	get()
	if ds.hits != 1 {
		t.Fatalf("exchanges %d, want 1 (no refresh yet)", ds.hits)
	}
	ds.clock.Advance(15 * time.Second) // 95s left
	get()
	if ds.hits != 2 {
		t.Fatalf("exchanges %d, want 2 (one refresh)", ds.hits)
	}
	x := ds.last()
	want := url.Values{"grant_type": {grantTypeTokenExchange}, "subject_token": {first}, "subject_token_type": {tokenTypeAccessToken}}
	if diff := cmp.Diff(want, x.Form); diff != "" {
		t.Errorf("refresh form (-want +got):\n%s", diff)
	}
	if x.ProofJKT != thumbprint(t, inst) {
		t.Errorf("refresh proof by %s, want the instance key", x.ProofJKT)
	}
	if cur := task.Current(); cur.AccessToken == first || peek(t, cur.AccessToken)["txn"] != task.ID {
		t.Errorf("after refresh: %+v", cur)
	}
	get()
	if ds.hits != 2 {
		t.Errorf("exchanges %d, want still 2", ds.hits)
	}
}

func TestDelegate(t *testing.T) {
	ctx := context.Background()
	ds, key := newDelegationServer(t)
	g, err := ds.source(t, key).Grant(ctx, "gr_1")
	if err != nil {
		t.Fatal(err)
	}
	inst := mustKey(t)
	task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{InstanceKey: inst})
	if err != nil {
		t.Fatal(err)
	}
	researcher := mustKey(t)
	resDID, _ := DID(researcher)
	act, err := NewActorToken(researcher, ds.url)
	if err != nil {
		t.Fatal(err)
	}
	child, err := task.Delegate(ctx, act, TaskRequest{Purpose: "read issues", Scopes: []string{"repo:read"}, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	x := ds.last()
	want := url.Values{
		"grant_type": {grantTypeTokenExchange}, "subject_token": {task.Current().AccessToken}, "subject_token_type": {tokenTypeAccessToken},
		"actor_token": {act}, "actor_token_type": {tokenTypeJWT}, "purpose": {"read issues"}, "scope": {"repo:read"}, "task_ttl": {"600"},
	}
	if diff := cmp.Diff(want, x.Form); diff != "" {
		t.Errorf("delegate form (-want +got):\n%s", diff)
	}
	if x.ProofJKT != thumbprint(t, inst) || x.ActorKID != resDID {
		t.Errorf("proof by %s (want the task's key), actor %s", x.ProofJKT, x.ActorKID)
	}
	if child.TaskID == task.ID || child.TaskID == "" || child.Scope != "repo:read" {
		t.Errorf("child %+v", child)
	}
	// The researcher takes it up with its own key and can refresh it.
	got, err := ResumeTask(ds.url, nil, child.AccessToken, researcher)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != child.TaskID || got.GrantID != "gr_1" {
		t.Errorf("resumed %s %s", got.ID, got.GrantID)
	}
	if err := got.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if x := ds.last(); x.ProofJKT != thumbprint(t, researcher) || x.Form.Has("actor_token") {
		t.Errorf("researcher's refresh: proof %s form %v", x.ProofJKT, x.Form)
	}
	// Not with another key, and not without an actor token.
	if _, err := ResumeTask(ds.url, nil, child.AccessToken, inst); err == nil {
		t.Error("resumed with a key the token is not bound to")
	}
	if _, err := task.Delegate(ctx, "", TaskRequest{}); err == nil {
		t.Error("delegated without an actor token")
	}
	if _, err := task.Delegate(ctx, act, TaskRequest{InstanceKey: inst}); err == nil {
		t.Error("delegated with an instance key")
	}
}

func TestGrantRequestPoll(t *testing.T) {
	defer func(d time.Duration) { pollInterval = d }(pollInterval)
	pollInterval = time.Millisecond
	ctx := context.Background()
	ds, key := newDelegationServer(t)
	ts := ds.source(t, key)
	id, err := RequestGrant(ctx, ts, GrantRequest{Scopes: []string{"repo:read"}, Resources: []string{"https://api.example/"},
		Limits: Limits{MaxTaskTTL: 30 * time.Minute}, Reason: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	if id != "grq_1" {
		t.Errorf("id %q", id)
	}
	body := ds.requests[0]
	if body["reason"] != "nightly" || body["max_task_ttl"] != float64(1800) || body["scopes"].([]any)[0] != "repo:read" {
		t.Errorf("request body %v", body)
	}

	ds.polls = []string{"authorization_pending", "slow_down", "authorization_pending", "approved"}
	start := time.Now()
	g, err := PollGrant(ctx, ts, id)
	if err != nil {
		t.Fatal(err)
	}
	if g.ID != "gr_2" || g.Token != "gt" || g.MaxTaskTTL != 10*time.Minute || g.RequestID != id {
		t.Errorf("grant %+v", g)
	}
	// 1 + 2 + 2 intervals (slow_down adds one).
	if d := time.Since(start); d < 5*time.Millisecond {
		t.Errorf("polled for %v, want at least 5 intervals", d)
	}
	if len(ds.polls) != 0 {
		t.Errorf("unused answers %v", ds.polls)
	}

	for _, code := range []string{"access_denied", "expired_token"} {
		ds.polls = []string{"authorization_pending", code}
		_, err := PollGrant(ctx, ts, id)
		var e *Error
		if !errors.As(err, &e) || e.Code != code {
			t.Errorf("err = %v, want *Error %s", err, code)
		}
	}

	ds.polls = []string{"authorization_pending", "authorization_pending"}
	cctx, cancel := context.WithCancel(ctx)
	pollInterval = time.Hour
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := PollGrant(cctx, ts, id); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestEndTask(t *testing.T) {
	ctx := context.Background()
	ds, key := newDelegationServer(t)
	ts := ds.source(t, key)
	g, err := ts.Grant(ctx, "gr_1")
	if err != nil {
		t.Fatal(err)
	}
	task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := task.End(ctx, ts); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{task.ID}, ds.ended); diff != "" {
		t.Errorf("ended (-want +got):\n%s", diff)
	}
	if _, err := ts.Grant(ctx, "gr_nope"); err == nil {
		t.Error("an unknown grant was found")
	}
}

// TestTaskExpiredTokenIsNotExchanged: a task's token that expired before it was renewed is never
// offered to the token endpoint (it proves nothing there); Token and Refresh say so with
// ErrTokenExpired. Token times are wall-clock, so that a machine that slept (its monotonic clock
// stood still) sees them expired as the server does.
func TestTaskExpiredTokenIsNotExchanged(t *testing.T) {
	ctx := context.Background()
	ds, key := newDelegationServer(t)
	g, err := ds.source(t, key).Grant(ctx, "gr_1")
	if err != nil {
		t.Fatal(err)
	}
	task, err := StartTask(ctx, nil, ds.url, key, g.Token, TaskRequest{InstanceKey: mustKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	task.now = ds.clock.Now
	cur := task.Current()
	for name, at := range map[string]time.Time{"IssuedAt": cur.IssuedAt, "ExpiresAt": cur.ExpiresAt} {
		if strings.Contains(at.String(), "m=") {
			t.Errorf("%s %v carries a monotonic reading; want the wall clock only", name, at)
		}
	}
	hits := ds.hits
	for _, d := range []time.Duration{cur.ExpiresAt.Sub(ds.clock.Now()), time.Second, time.Hour} {
		ds.clock.Advance(d)
		if _, err := task.Token(ctx); !errors.Is(err, ErrTokenExpired) {
			t.Errorf("Token %v after expiry = %v, want ErrTokenExpired", d, err)
		}
		if err := task.Refresh(ctx); !errors.Is(err, ErrTokenExpired) || !strings.Contains(err.Error(), task.ID) {
			t.Errorf("Refresh after expiry = %v, want ErrTokenExpired naming the task", err)
		}
	}
	if ds.hits != hits {
		t.Errorf("the expired token was sent to the token endpoint %d times", ds.hits-hits)
	}
}
