package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/proxy"
)

// assertingUpstream is a third-party API that trusts mandate's identity assertions: it verifies
// the Txn-Token of every call against the server's /oauth/jwks, as an upstream would, and looks
// up the call's pending audit record by the Mandate-Request-Id it received.
type assertingUpstream struct {
	srv *httptest.Server
	key string

	mu    sync.Mutex
	calls []assertedCall
}

type assertedCall struct {
	requestID string
	traceID   string
	claims    proxy.TxnToken
	typ       string
	err       error
	pending   bool // the pending record was in the store when the call arrived
}

func newAssertingUpstream(t *testing.T, ts *testServer) *assertingUpstream {
	u := &assertingUpstream{key: "sk_live_" + randomID()}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+u.key {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		c := assertedCall{requestID: r.Header.Get("Mandate-Request-Id")}
		if tp := r.Header.Get("Traceparent"); len(tp) == 55 {
			c.traceID = tp[3:35]
		}
		evs, err := ts.Srv.Store().ListEvents(r.Context(), audit.Filter{RequestID: c.requestID, Limit: 10})
		for _, ev := range evs {
			c.pending = c.pending || (err == nil && ev.Outcome == audit.OutcomePending && ev.Action == proxy.ActionCall)
		}
		c.typ, c.err = verifyTxnToken(ts, r.Header.Get("Txn-Token"), &c.claims)
		u.mu.Lock()
		u.calls = append(u.calls, c)
		u.mu.Unlock()
		fmt.Fprintf(w, `{"ok":true}`)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// verifyTxnToken checks a Txn-Token as an upstream does: a JWS signed by a key of the issuer's
// JWKS (fetched over HTTP), then its claims.
func verifyTxnToken(ts *testServer, tok string, claims *proxy.TxnToken) (string, error) {
	if tok == "" {
		return "", fmt.Errorf("no Txn-Token")
	}
	resp, err := ts.HC.Get(ts.URL + "/oauth/jwks")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var jwks jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		return "", fmt.Errorf("jwks: %w", err)
	}
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		return "", err
	}
	h := jws.Signatures[0].Protected
	keys := jwks.Key(h.KeyID)
	if len(keys) != 1 {
		return "", fmt.Errorf("kid %q is not in the JWKS", h.KeyID)
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		return "", err
	}
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	return typ, json.Unmarshal(payload, claims)
}

// TestIdentityAssertion: an upstream marked identity_assertion receives on every call a
// Txn-Token it verifies with the server's JWKS, naming the principal, the task and its purpose,
// the chain (agent and handle) and the request id it also received in Mandate-Request-Id,
// valid for at most a minute; the call's pending record was durable in the real store before
// the upstream saw it; an upstream not marked gets none.
func TestIdentityAssertion(t *testing.T) {
	for _, alg := range []string{"EdDSA", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			ts := newTestServer(t, func(c *config.Config) { c.SigningAlg = alg })
			up := newAssertingUpstream(t, ts)
			resp, out := ts.adminJSON(t, "POST", "/v1/upstreams", map[string]any{
				"name": "crm", "base_url": up.srv.URL, "auth": "bearer", "allow_private": true, "identity_assertion": true,
				"routes": []map[string]any{{"scope": "crm:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
			})
			if resp.StatusCode != 201 || out["identity_assertion"] != true {
				t.Fatalf("add upstream: %d %v", resp.StatusCode, out)
			}
			if resp, out := ts.adminJSON(t, "PUT", "/v1/upstreams/crm/secrets/credential", map[string]string{"secret": up.key}); resp.StatusCode != 204 {
				t.Fatalf("set secret: %d %v", resp.StatusCode, out)
			}
			a := ts.newAgent(t, "crm-reader", true)
			grantID := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"crm:read"}, "resources": []string{ts.URL + "/proxy/crm"}})
			resp, res := ts.exchange(t, a.Key, url.Values{"subject_token": {ts.grantToken(t, a, grantID)}, "subject_token_type": {tokenTypeJWT},
				"purpose": {"reconcile the March invoices"}})
			if resp.StatusCode != 200 {
				t.Fatalf("start task: %d %v", resp.StatusCode, res)
			}
			tok := res["access_token"].(string)
			task := taskOf(t, tok)

			req := ts.dpopRequest(t, a.Key, tok, "GET", ts.URL+"/proxy/crm/v1/accounts?id=42", nil)
			req.Header.Set("Txn-Token", "forged")
			resp, err := ts.HC.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("proxied call: %d", resp.StatusCode)
			}

			up.mu.Lock()
			calls := append([]assertedCall(nil), up.calls...)
			up.mu.Unlock()
			if len(calls) != 1 {
				t.Fatalf("%d calls reached the upstream", len(calls))
			}
			c := calls[0]
			if c.err != nil || c.typ != proxy.TypeTxnToken {
				t.Fatalf("the upstream could not verify the Txn-Token (typ %q): %v", c.typ, c.err)
			}
			if !c.pending {
				t.Error("the call reached the upstream before its pending record was in the store")
			}
			cl := c.claims
			chain := cl.Tctx.Chain
			if cl.Issuer != ts.URL || cl.Audience != up.srv.URL || cl.Txn != task || cl.Tctx.Task != task || cl.Tctx.Grant != grantID ||
				!strings.HasPrefix(cl.Subject, "usr_") || cl.Purpose != "reconcile the March invoices" || cl.Scope != "crm:read" ||
				cl.RequestID != c.requestID || cl.Rctx.RequestID != c.requestID || !strings.HasPrefix(c.requestID, "req_") ||
				len(chain) != 1 || chain[0].AgentID != a.ID || chain[0].Handle != "crm-reader" || cl.Rctx.Workload != ts.URL {
				t.Errorf("claims %+v (request id %q, agent %s, task %s, grant %s)", cl, c.requestID, a.ID, task, grantID)
			}
			if life := time.Unix(cl.Expiry, 0).Sub(time.Unix(cl.IssuedAt, 0)); life <= 0 || life > time.Minute {
				t.Errorf("Txn-Token lives %s, want at most a minute", life)
			}

			// From the upstream's log line (its request id) to the trail: the pending record and
			// its completion, with the principal the assertion named.
			ts.Srv.Proxy().Wait(t.Context())
			evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{RequestID: c.requestID})
			if err != nil || len(evs) != 2 {
				t.Fatalf("%d events of request %s: %v", len(evs), c.requestID, err)
			}
			done, pending := evs[0], evs[1]
			if pending.Outcome != audit.OutcomePending || done.Outcome != audit.OutcomeSuccess || done.Cause != pending.ID ||
				done.PrincipalID != cl.Subject || done.TaskID != task || done.Call == nil || done.Call.Status != 200 ||
				!strings.Contains(pending.Detail, "trace "+c.traceID) {
				t.Errorf("trail of %s: pending %+v, completion %+v", c.requestID, pending, done)
			}
		})
	}
	t.Run("not asked", func(t *testing.T) {
		f := newProxyFixture(t, nil)
		got := make(chan http.Header, 1)
		f.up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- r.Header.Clone()
			fmt.Fprint(w, "{}")
		})
		if s := f.status(t, "/v1/items"); s != 200 {
			t.Fatalf("status %d", s)
		}
		h := <-got
		if h.Get("Txn-Token") != "" || !strings.HasPrefix(h.Get("Mandate-Request-Id"), "req_") || h.Get("Traceparent") == "" {
			t.Errorf("upstream headers %v: want a request id and traceparent, no Txn-Token", h)
		}
	})
}
