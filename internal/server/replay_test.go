package server_test

import (
	"context"
	"crypto"
	"database/sql"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/dpop/sqlreplay"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/proxy"
	"github.com/mandate-dev/mandate/verify"
)

// replicas are mandate servers on one PostgreSQL database, with one data directory (the master
// key) and one public issuer URL, as behind a load balancer: replicas[0] is the one whose
// address the issuer names; the others are reached at their own address with the issuer's Host.
type replicas []*testServer

func newReplicas(t *testing.T, n int) (replicas, string) {
	t.Helper()
	dsn := pgtest.URL(t) // skips, saying so, without MANDATE_TEST_POSTGRES
	a := newTestServer(t, func(c *config.Config) { c.Database = dsn })
	rs := replicas{a}
	for range n - 1 {
		rs = append(rs, newTestServer(t, func(c *config.Config) { c.Database, c.DataDir, c.Issuer = dsn, a.DataDir, a.URL }))
	}
	return rs, dsn
}

// send sends req (aimed at the issuer's URL) to replica i, keeping the issuer's Host.
func (rs replicas) send(t *testing.T, i int, method, u, authorization, proof string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	req.URL.Host = rs[i].Addr
	req.Host = strings.TrimPrefix(rs[0].URL, "http://")
	req.Header.Set("Authorization", authorization)
	req.Header.Set("DPoP", proof)
	return rs[0].do(t, req)
}

// sharedResource is one verify-based resource served by several replicas, each with its own
// listener and verifier, sharing a dpop/sqlreplay store on one database; all answer to one
// public URL (BaseURL), as behind a load balancer.
type sharedResource struct {
	public string
	addrs  []string
}

func newSharedResource(t *testing.T, ts *testServer, dsn string, n int) *sharedResource {
	t.Helper()
	res := &sharedResource{public: "https://rs.example"}
	for range n {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		store, err := sqlreplay.New(context.Background(), db, sqlreplay.Options{Table: "rs_dpop_replay"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		v, err := verify.New(verify.Config{Issuer: ts.URL, Audience: res.public + "/", BaseURL: res.public, Now: ts.Clock.Now,
			HTTPClient: ts.HC, DPoP: dpop.Config{Replay: store}})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, _ := verify.CallerFrom(r.Context())
			json.NewEncoder(w).Encode(map[string]string{"agent": c.AgentID})
		})))
		t.Cleanup(srv.Close)
		res.addrs = append(res.addrs, strings.TrimPrefix(srv.URL, "http://"))
	}
	return res
}

func (res *sharedResource) call(t *testing.T, ts *testServer, i int, tok, proof string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+res.addrs[i]+"/data", nil)
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", proof)
	return ts.do(t, req)
}

// TestProofSingleUseAcrossReplicas: a proof and token captured at replica A are refused at B
// and C — at the proxy (the upstream, counting requests, sees one call), at /v1/agent/* and at a
// verify resource whose three replicas share the SQL replay store — and each refusal is a
// replay (at the proxy: 401 invalid_dpop_proof, recorded as token_replay, nothing forwarded).
func TestProofSingleUseAcrossReplicas(t *testing.T) {
	rs, dsn := newReplicas(t, 3)
	a := rs[0]
	up := addItemsUpstream(t, a)
	agent := a.newAgent(t, "replay-replicas", true)

	t.Run("proxy", func(t *testing.T) {
		tok := a.startTask(t, agent, a.grantToken(t, agent, itemsGrant(t, a, agent, nil)))
		u := a.URL + "/proxy/items/v1/items"
		auth, proof := "DPoP "+tok, a.proof(t, agent.Key, "GET", u, tok)
		if resp, out := rs.send(t, 0, "GET", u, auth, proof); resp.StatusCode != 200 {
			t.Fatalf("first use at A: %d %v", resp.StatusCode, out)
		}
		for i := 1; i < len(rs); i++ {
			resp, out := rs.send(t, i, "GET", u, auth, proof)
			if resp.StatusCode != 401 || out["error"] != "invalid_dpop_proof" {
				t.Errorf("replayed at replica %d: %d %v, want 401 invalid_dpop_proof", i, resp.StatusCode, out)
			}
		}
		if n := up.calls.Load(); n != 1 {
			t.Errorf("the upstream saw %d calls, want 1", n)
		}
		// Each refusal is on record as a replay, as that agent's, and no pending record was left.
		for _, r := range rs {
			if err := r.Srv.Proxy().Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		evs, err := a.Srv.Store().ListEvents(context.Background(), audit.Filter{Action: proxy.ActionCall, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		replays, pending := 0, 0
		for _, e := range evs {
			if e.Reason == "token_replay" && e.Outcome == audit.OutcomeDenied && e.AgentID == agent.ID {
				replays++
			}
			if e.Outcome == audit.OutcomePending {
				pending++
			}
		}
		if replays != 2 || pending != 1 {
			t.Errorf("trail: %d replays, %d pending records; want 2 and 1 (the forwarded call's)", replays, pending)
		}
		// A fresh proof is accepted at B: the refusals were the replay.
		if resp, out := rs.send(t, 1, "GET", u, auth, a.proof(t, agent.Key, "GET", u, tok)); resp.StatusCode != 200 {
			t.Errorf("fresh proof at B: %d %v", resp.StatusCode, out)
		}
	})

	t.Run("agent API", func(t *testing.T) {
		tok := a.token(t, agent, agent.Key, nil)
		u := a.URL + "/v1/agent/whoami"
		auth, proof := "DPoP "+tok, a.proof(t, agent.Key, "GET", u, tok)
		if resp, out := rs.send(t, 0, "GET", u, auth, proof); resp.StatusCode != 200 {
			t.Fatalf("first use at A: %d %v", resp.StatusCode, out)
		}
		for i := 1; i < len(rs); i++ {
			resp, out := rs.send(t, i, "GET", u, auth, proof)
			if resp.StatusCode != 401 || out["error"] != "invalid_dpop_proof" {
				t.Errorf("replayed at replica %d: %d %v, want 401 invalid_dpop_proof", i, resp.StatusCode, out)
			}
		}
		if resp, out := rs.send(t, 2, "GET", u, auth, a.proof(t, agent.Key, "GET", u, tok)); resp.StatusCode != 200 {
			t.Errorf("fresh proof at C: %d %v", resp.StatusCode, out)
		}
	})

	t.Run("token endpoint", func(t *testing.T) {
		a.token(t, agent, agent.Key, nil) // a nonce, valid at every replica (from the shared master key)
		u := a.URL + "/oauth/token"
		proof := a.proof(t, agent.Key, "POST", u, "")
		if resp, out := a.tokenRequest(t, a.ccForm(t, agent, a.assertion(t, agent, randomID())), proof); resp.StatusCode != 200 {
			t.Fatalf("first use at A: %d %v", resp.StatusCode, out)
		}
		for i := 1; i < len(rs); i++ {
			form := a.ccForm(t, agent, a.assertion(t, agent, randomID()))
			req, _ := http.NewRequest("POST", "http://"+rs[i].Addr+"/oauth/token", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("DPoP", proof)
			// The proof's id and the client assertion's commit together with the issue; the
			// refusal names the assertion (a captured request replays both).
			if resp, out := a.do(t, req); resp.StatusCode == 200 || out["access_token"] != nil {
				t.Errorf("replayed at replica %d: %d %v, want a refusal", i, resp.StatusCode, out)
			}
		}
	})

	t.Run("verify resource", func(t *testing.T) {
		res := newSharedResource(t, a, dsn, 3)
		g := a.grant(t, map[string]any{"agent": agent.ID, "scopes": []string{"read"}, "resources": []string{res.public + "/"}})
		tok := a.startTask(t, agent, a.grantToken(t, agent, g))
		proof := a.proof(t, agent.Key, "GET", res.public+"/data", tok)
		if resp, out := res.call(t, a, 0, tok, proof); resp.StatusCode != 200 {
			t.Fatalf("first use at A: %d %v", resp.StatusCode, out)
		}
		for i := 1; i < 3; i++ {
			if resp, out := res.call(t, a, i, tok, proof); resp.StatusCode != 401 || out["error"] != "invalid_dpop_proof" {
				t.Errorf("replayed at replica %d: %d %v, want 401 invalid_dpop_proof", i, resp.StatusCode, out)
			}
		}
	})
}

// TestProofAcceptedOnceAnyInterleaving is the class: for any N replicas × M presentations of one
// proof and token, in any order or all at once, at the proxy and at /v1/agent/*, exactly one is
// accepted (and the upstream sees exactly one call per proof).
func TestProofAcceptedOnceAnyInterleaving(t *testing.T) {
	rs, _ := newReplicas(t, 3)
	a := rs[0]
	up := addItemsUpstream(t, a)
	agent := a.newAgent(t, "replay-interleavings", true)
	taskTok := a.startTask(t, agent, a.grantToken(t, agent, itemsGrant(t, a, agent, nil)))
	selfTok := a.token(t, agent, agent.Key, nil)
	targets := []struct {
		name, url, tok string
	}{
		{"proxy", a.URL + "/proxy/items/v1/items", taskTok},
		{"agent API", a.URL + "/v1/agent/whoami", selfTok},
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	for round := range 12 {
		target := targets[round%len(targets)]
		n, m := 1+rng.IntN(len(rs)), 1+rng.IntN(3)
		concurrent := rng.IntN(2) == 0
		var order []int
		for r := range n {
			for range m {
				order = append(order, r)
			}
		}
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		proof := a.proof(t, agent.Key, "GET", target.url, target.tok)
		before := up.calls.Load()
		codes := make([]int, len(order))
		present := func(i, r int) {
			resp, _ := rs.send(t, r, "GET", target.url, "DPoP "+target.tok, proof)
			codes[i] = resp.StatusCode
		}
		if concurrent {
			var wg sync.WaitGroup
			for i, r := range order {
				wg.Go(func() { present(i, r) })
			}
			wg.Wait()
		} else {
			for i, r := range order {
				present(i, r)
			}
		}
		ok, replays := 0, 0
		for _, c := range codes {
			switch c {
			case 200:
				ok++
			case 401:
				replays++
			}
		}
		desc := fmt.Sprintf("round %d, %s: %d replicas × %d presentations, concurrent %v, order %v: codes %v", round, target.name, n, m, concurrent, order, codes)
		if ok != 1 || replays != len(order)-1 {
			t.Errorf("%s: want one 200 and the rest 401", desc)
		}
		if target.name == "proxy" {
			if got := up.calls.Load() - before; got != 1 {
				t.Errorf("%s: the upstream saw %d calls, want 1", desc, got)
			}
		}
	}
}

// TestOneNodeKeepsProofIDsInMemory: on SQLite (one process) no DPoP proof id is written to the
// database — the token endpoint's, the proxy's and /v1's proofs are kept in memory only (the
// issue's "kept 30 min in the database even on one node") — while a replay is still refused.
func TestOneNodeKeepsProofIDsInMemory(t *testing.T) {
	ts := newTestServer(t)
	addItemsUpstream(t, ts)
	agent := ts.newAgent(t, "one-node", true)
	taskTok := ts.startTask(t, agent, ts.grantToken(t, agent, itemsGrant(t, ts, agent, nil)))
	selfTok := ts.token(t, agent, agent.Key, nil)
	tokenProof := ts.proof(t, agent.Key, "POST", ts.URL+"/oauth/token", "")
	if resp, out := ts.tokenRequest(t, ts.ccForm(t, agent, ts.assertion(t, agent, randomID())), tokenProof); resp.StatusCode != 200 {
		t.Fatalf("token: %d %v", resp.StatusCode, out)
	}
	used := []string{tokenProof}
	for _, c := range []struct{ url, tok string }{
		{ts.URL + "/proxy/items/v1/items", taskTok},
		{ts.URL + "/v1/agent/whoami", selfTok},
	} {
		proof := ts.proof(t, agent.Key, "GET", c.url, c.tok)
		req := mustReq(t, "GET", c.url)
		req.Header.Set("Authorization", "DPoP "+c.tok)
		req.Header.Set("DPoP", proof)
		if resp, out := ts.do(t, req); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", c.url, resp.StatusCode, out)
		}
		req = mustReq(t, "GET", c.url)
		req.Header.Set("Authorization", "DPoP "+c.tok)
		req.Header.Set("DPoP", proof)
		if resp, out := ts.do(t, req); resp.StatusCode != 401 {
			t.Errorf("replayed GET %s: %d %v, want 401", c.url, resp.StatusCode, out)
		}
		used = append(used, proof)
	}
	// The database has none of them: each id can still be used there once.
	jkt := thumbprint(t, agent.Key.Public())
	for _, p := range used {
		id := "dpop:" + jkt + ":" + claimOf(t, p, "jti").(string)
		if err := ts.Srv.Store().Use(context.Background(), id, ts.Clock.Now().Add(time.Hour)); err != nil {
			t.Errorf("proof id %s is in the database: %v", id, err)
		}
	}
}

func thumbprint(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	jkt, err := dpop.Thumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	return jkt
}
