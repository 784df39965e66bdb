package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/verify"
)

// TestRefusalsShareOneShape drives one refusal of every writer — the token endpoint,
// introspection and revocation, the /v1 JSON API, /v1/agent/* behind the verify middleware, the
// proxy and its metadata, the catch-all, and verify in front of a third party's resource — and
// checks that each answers in the one shape: a JSON body of exactly error, error_description
// and request_id; Cache-Control: no-store; the request id in the body equal to X-Request-Id,
// issued by the server (never the client's own), and equal to the id of the refusal's audit
// event where one is written, which keeps the client's id beside it.
func TestRefusalsShareOneShape(t *testing.T) {
	// Every anonymous refusal written one by one: none is folded into a count.
	// One registration a minute: the agent below takes it, the case past the rate is refused.
	ts := newTestServer(t, func(c *config.Config) { c.DenialAuditRate, c.RegisterRate, c.RegisterBurst = 0, 1, 1 })
	addItemsUpstream(t, ts)
	a := ts.newAgent(t, "refused", true)

	// A third party's resource server: its own middleware issues request ids, and verify (with
	// no RequestID set) repeats the one it finds on the response.
	v, err := verify.New(verify.Config{Issuer: ts.URL, Audience: "https://rs.example/", Now: ts.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "rs-"+randomID())
		v.Middleware(http.NotFoundHandler()).ServeHTTP(w, r)
	}))
	t.Cleanup(rs.Close)

	form := func(vs url.Values) func() *http.Request {
		return func() *http.Request {
			req, _ := http.NewRequest("POST", ts.URL+"/oauth/token", strings.NewReader(vs.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return req
		}
	}
	at := func(base, method, path string, header ...string) func() *http.Request {
		return func() *http.Request {
			req, _ := http.NewRequest(method, base+path, strings.NewReader(""))
			for i := 0; i+1 < len(header); i += 2 {
				req.Header.Set(header[i], header[i+1])
			}
			return req
		}
	}
	tests := map[string]struct {
		req       func() *http.Request
		status    int
		code      string
		challenge string // prefix of WWW-Authenticate; "" = none
		nonce     bool   // a DPoP-Nonce comes with it
		header    string // another header that must come with it
		action    string // the audit event written for the refusal; "" = none
		thirdPart bool   // the resource server is not mandate: its own ids, no mandate audit
	}{
		"token endpoint: unknown grant type": {
			req: form(url.Values{"grant_type": {"password"}}), status: 400, code: "unsupported_grant_type", action: audit.ActionTokenDeny,
		},
		"token endpoint: nonce challenge": {
			req: func() *http.Request {
				req := form(ts.ccForm(t, a, ts.assertion(t, a, randomID())))()
				req.Header.Set("DPoP", ts.proof(t, a.Key, "POST", ts.URL+"/oauth/token", ""))
				return req
			},
			status: 400, code: "use_dpop_nonce", nonce: true, // a step of the protocol, not audited
		},
		"introspection without client authentication": {
			req: at(ts.URL, "POST", "/oauth/introspect?token=x", "Content-Type", "application/x-www-form-urlencoded"), status: 401, code: "invalid_client",
		},
		"revocation with an unknown API token": {
			req:    at(ts.URL, "POST", "/oauth/revoke", "Content-Type", "application/x-www-form-urlencoded", "Authorization", "Bearer mnd_nope"),
			status: 401, code: "invalid_client", challenge: `Bearer realm="mandate", error="invalid_token"`,
		},
		"/v1 without a token": {
			req: at(ts.URL, "GET", "/v1/agents"), status: 401, code: "unauthenticated", challenge: `Bearer realm="mandate"`,
		},
		"/v1 with an invalid body": {
			req: func() *http.Request {
				req := at(ts.URL, "POST", "/v1/grants", "Authorization", "Bearer "+ts.Admin, "Content-Type", "application/json")()
				req.Body = io.NopCloser(strings.NewReader(`{"agent": 1}`))
				return req
			},
			status: 400, code: "invalid_request",
		},
		"/v1 past the rate limit": {
			req:    at(ts.URL, "POST", "/v1/agents", "Content-Type", "application/jose"),
			status: 429, code: "rate_limited", header: "Retry-After", action: audit.ActionAgentRegister,
		},
		"no such endpoint": {
			req: at(ts.URL, "GET", "/nope"), status: 404, code: "not_found",
		},
		"/v1/agent without a token (verify)": {
			req: at(ts.URL, "GET", "/v1/agent/whoami"), status: 401, code: "invalid_token", challenge: `DPoP algs=`, action: audit.ActionResourceDeny,
		},
		"/v1/agent with a bearer token (verify)": {
			req:    at(ts.URL, "GET", "/v1/agent/whoami", "Authorization", "Bearer x"),
			status: 401, code: "invalid_token", challenge: `DPoP error="invalid_token"`, action: audit.ActionResourceDeny,
		},
		"proxy: no such upstream": {
			req: at(ts.URL, "GET", "/proxy/nope/v1/x"), status: 404, code: "not_found", action: "proxy.call",
		},
		"proxy: no token": {
			req: at(ts.URL, "GET", "/proxy/items/v1/x"), status: 401, code: "invalid_token",
			challenge: `DPoP resource_metadata="` + ts.URL + `/.well-known/oauth-protected-resource/proxy/items"`, action: "proxy.call",
		},
		"proxy: a malformed token": {
			req:    at(ts.URL, "GET", "/proxy/items/v1/x", "Authorization", "DPoP x.y.z", "DPoP", "x.y.z"),
			status: 401, code: "invalid_token", challenge: `DPoP error="invalid_token"`, action: "proxy.call",
		},
		"proxy metadata: no such upstream": {
			req: at(ts.URL, "GET", "/.well-known/oauth-protected-resource/proxy/nope"), status: 404, code: "not_found",
		},
		"verify in front of a third party": {
			req: at(rs.URL, "GET", "/data", "Authorization", "DPoP x.y.z", "DPoP", "x.y.z"), status: 401, code: "invalid_token",
			challenge: `DPoP error="invalid_token"`, thirdPart: true,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			req := tt.req()
			const clientID = "client-chosen-1"
			req.Header.Set("X-Request-Id", clientID)
			resp, err := ts.HC.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body map[string]string
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("%d: body %q is not one JSON object of strings: %v", resp.StatusCode, raw, err)
			}
			if resp.StatusCode != tt.status || body["error"] != tt.code {
				t.Fatalf("got %d %v, want %d %s", resp.StatusCode, body, tt.status, tt.code)
			}
			var keys []string
			for k := range body {
				keys = append(keys, k)
			}
			if diff := cmp.Diff([]string{"error", "error_description", "request_id"}, keys, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("body fields (-want +got):\n%s", diff)
			}
			if body["error_description"] == "" {
				t.Error("no error_description")
			}
			for k, want := range map[string]string{"Cache-Control": "no-store", "Content-Type": "application/json"} {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			id := body["request_id"]
			if id == "" || id != resp.Header.Get("X-Request-Id") {
				t.Fatalf("request_id %q, X-Request-Id %q: want the same, not empty", id, resp.Header.Get("X-Request-Id"))
			}
			wantPrefix := "req_"
			if tt.thirdPart {
				wantPrefix = "rs-"
			}
			if !strings.HasPrefix(id, wantPrefix) {
				t.Errorf("request_id %q is not the server's own (%s…)", id, wantPrefix)
			}
			if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, tt.challenge) || (tt.challenge == "") != (got == "") {
				t.Errorf("WWW-Authenticate = %q, want it to start with %q", got, tt.challenge)
			}
			if got := resp.Header.Get("DPoP-Nonce"); tt.nonce && got == "" {
				t.Error("no DPoP-Nonce")
			}
			if tt.header != "" && resp.Header.Get(tt.header) == "" {
				t.Errorf("no %s", tt.header)
			}

			evs, err := ts.Srv.Store().ListEvents(context.Background(), audit.Filter{RequestID: id})
			if err != nil {
				t.Fatal(err)
			}
			// The proxy records a refusal after it answered: wait for it.
			for i := 0; tt.action != "" && len(evs) == 0 && i < 100; i++ {
				time.Sleep(20 * time.Millisecond)
				if evs, err = ts.Srv.Store().ListEvents(context.Background(), audit.Filter{RequestID: id}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.action == "" {
				if len(evs) != 0 && !tt.thirdPart {
					t.Errorf("%d audit events for a refusal that writes none: %+v", len(evs), evs)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("%d audit events with request id %s, want 1", len(evs), id)
			}
			ev := evs[0]
			// The proxy withholds what the agent says about itself when it knows no credential
			// to mask it against (an unknown upstream): it could hold one.
			wantClient := clientID
			if strings.Contains(name, "no such upstream") {
				wantClient = "(withheld)"
			}
			if ev.Action != tt.action || ev.Outcome != audit.OutcomeDenied || ev.RequestID != id || ev.ClientRequestID != wantClient {
				t.Errorf("audit event: action %s, outcome %s, request id %s, client's %s; want %s, denied, %s, %s",
					ev.Action, ev.Outcome, ev.RequestID, ev.ClientRequestID, tt.action, id, wantClient)
			}
		})
	}
}
