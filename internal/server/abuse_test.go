package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// newFrozenServer is a real server whose clock stands still, so that a rate limit's bucket
// never refills during the test and its answers are exact.
func newFrozenServer(t *testing.T, edit ...func(*config.Config)) (*testServer, time.Time) {
	t.Helper()
	frozen := time.Now().Truncate(time.Second)
	s := servertest.Start(t, servertest.Options{Now: func() time.Time { return frozen }, Config: func(c *config.Config) {
		for _, e := range edit {
			e(c)
		}
	}})
	return &testServer{URL: s.URL, Addr: s.Addr, DataDir: s.DataDir, Admin: s.AdminToken, Srv: s.Srv, Clock: &clock{},
		HC: &http.Client{Timeout: 10 * time.Second}}, frozen
}

// clientFrom is an HTTP client whose connections come from the local address ip (any
// 127.0.0.0/8 address is this machine), so a test can be several clients.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

// signedRegistration is a registration of a fresh key for handle, signed at now.
func signedRegistration(t *testing.T, issuer, handle string, now time.Time) string {
	k, did := newKey(t)
	return signJWS(t, k, did, "mandate-registration+jwt", map[string]any{
		"iss": did, "aud": issuer, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
		"jti": randomID(), "handle": handle,
	})
}

func postJOSE(t *testing.T, hc *http.Client, u, body string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/jose")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(raw)
}

// auditCount is the sum of the counts of audit events of action and reason (an event
// without a count stands for one), and how many events there are.
func auditCount(t *testing.T, ts *testServer, action, reason string) (rows int, total int64) {
	t.Helper()
	evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Action: action, Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if reason != "" && ev.Reason != reason {
			continue
		}
		rows++
		total += max(ev.Count, 1)
	}
	return rows, total
}

// TestRegistrationRateLimited: 200 registrations from one address get the burst (20) through
// and 429 with Retry-After past it, with an OAuth-style body that says when to retry; another
// address is unaffected; X-Forwarded-For does not move a client to another bucket unless it
// comes from a trusted proxy; and the refusals are in the audit trail, counted, in a bounded
// number of rows.
func TestRegistrationRateLimited(t *testing.T) {
	ts, now := newFrozenServer(t)
	hc := clientFrom("127.0.0.1")
	created, limited := 0, 0
	for i := range 200 {
		// Each would choose its own address if X-Forwarded-For were believed.
		resp, body := postJOSE(t, hc, ts.URL+"/v1/agents", signedRegistration(t, ts.URL, fmt.Sprintf("flood-%d", i), now),
			http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i%250)}})
		switch resp.StatusCode {
		case http.StatusCreated:
			created++
		case http.StatusTooManyRequests:
			limited++
			if got := resp.Header.Get("Retry-After"); got != "6" {
				t.Fatalf("Retry-After %q, want 6 (seconds until the next of 10 a minute)", got)
			}
			if !strings.Contains(body, `"error": "rate_limited"`) || !strings.Contains(body, "retry after 6 seconds") {
				t.Fatalf("429 body %s: want error rate_limited and when to retry", body)
			}
		default:
			t.Fatalf("registration %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if created != 20 || limited != 180 {
		t.Fatalf("%d registrations created and %d refused, want 20 (the burst) and 180", created, limited)
	}
	// Another address has its own bucket.
	if resp, body := postJOSE(t, clientFrom("127.0.0.2"), ts.URL+"/v1/agents", signedRegistration(t, ts.URL, "other-address", now), nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("registration from another address: %d %s", resp.StatusCode, body)
	}
	// Claims are limited per address the same way, before the API token is even read.
	for i := range 10 {
		if resp, body := ts.claim(t, ts.Admin, "AAAA-BBBB-CCCC-DDDD"); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("claim %d: %d %v", i, resp.StatusCode, body)
		}
	}
	if resp, _ := ts.claim(t, "not-a-token", "AAAA-BBBB-CCCC-DDDD"); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("claim past the burst: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	ts.Srv.FlushDenials(t.Context())
	rows, total := auditCount(t, ts, audit.ActionAgentRegister, "rate_limited")
	if total != 180 || rows > 31 {
		t.Errorf("audit: %d rows counting %d refused registrations, want 180 in at most 31 rows (30 one by one, then one count)", rows, total)
	}
}

// TestRateLimitSettings: 0 disables a limit, and behind a trusted proxy each client named by
// X-Forwarded-For has its own bucket.
func TestRateLimitSettings(t *testing.T) {
	t.Run("disabled", func(t *testing.T) {
		ts, now := newFrozenServer(t, func(c *config.Config) { c.RegisterRate = 0 })
		for i := range 50 {
			if resp, body := postJOSE(t, ts.HC, ts.URL+"/v1/agents", signedRegistration(t, ts.URL, fmt.Sprintf("free-%d", i), now), nil); resp.StatusCode != http.StatusCreated {
				t.Fatalf("registration %d with --register-rate 0: %d %s", i, resp.StatusCode, body)
			}
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		ts, now := newFrozenServer(t, func(c *config.Config) { c.RegisterBurst, c.TrustedProxies = 1, []string{"127.0.0.1"} })
		for i := range 5 {
			xff := http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i)}}
			if resp, body := postJOSE(t, ts.HC, ts.URL+"/v1/agents", signedRegistration(t, ts.URL, fmt.Sprintf("proxied-%d", i), now), xff); resp.StatusCode != http.StatusCreated {
				t.Fatalf("registration for client %d behind the proxy: %d %s", i, resp.StatusCode, body)
			}
		}
		xff := http.Header{"X-Forwarded-For": {"198.51.100.0"}}
		if resp, _ := postJOSE(t, ts.HC, ts.URL+"/v1/agents", signedRegistration(t, ts.URL, "proxied-again", now), xff); resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("second registration of one client behind the proxy: %d, want 429", resp.StatusCode)
		}
	})
}

// TestHandleFreedAfterPurge: a handle squatted by an agent nobody claims is free again once its
// claim code has lapsed for the grace period and the purge has run; claimed agents, and agents
// still within the grace, stay.
func TestHandleFreedAfterPurge(t *testing.T) {
	ts := newTestServer(t)
	squatter := &testAgent{Handle: "deploy-bot"}
	squatter.Key, squatter.DID = newKey(t)
	if resp, body := ts.register(t, squatter, ts.registration(t, squatter, randomID())); resp.StatusCode != http.StatusCreated {
		t.Fatalf("register the squatter: %d %v", resp.StatusCode, body)
	}
	squatter.ID = ts.agentIDOf(t, "@deploy-bot")
	claimed := ts.newAgent(t, "kept-claimed", true)
	legit := &testAgent{Handle: "deploy-bot"}
	legit.Key, legit.DID = newKey(t)
	if resp, body := ts.register(t, legit, ts.registration(t, legit, randomID())); resp.StatusCode != http.StatusConflict {
		t.Fatalf("register the taken handle: %d %v, want 409", resp.StatusCode, body)
	}

	// Within the grace after the code lapsed, nothing goes: the agent may still ask for a code.
	ts.Clock.Advance(15*time.Minute + 23*time.Hour)
	late := ts.newAgent(t, "late-bot", false)
	if n, err := ts.Srv.PurgeUnclaimedAgents(t.Context()); err != nil || n != 0 {
		t.Fatalf("purge within the grace = %d, %v; want nothing", n, err)
	}
	ts.Clock.Advance(time.Hour + time.Second)
	if n, err := ts.Srv.PurgeUnclaimedAgents(t.Context()); err != nil || n != 1 {
		t.Fatalf("purge after the grace = %d, %v; want the squatter", n, err)
	}
	if resp, body := ts.register(t, legit, ts.registration(t, legit, randomID())); resp.StatusCode != http.StatusCreated {
		t.Fatalf("register @deploy-bot after the purge: %d %v", resp.StatusCode, body)
	}
	// The squatter's key is free too, and the agent itself is told it is gone.
	if resp, _ := ts.claimCode(t, squatter, randomID()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("new claim code for the purged agent: %d, want 404", resp.StatusCode)
	}
	for _, ref := range []string{claimed.ID, late.ID} {
		req := mustReq(t, "GET", ts.URL+"/v1/agents/"+ref)
		req.Header.Set("Authorization", "Bearer "+ts.Admin)
		if resp, _ := ts.do(t, req); resp.StatusCode != http.StatusOK {
			t.Errorf("agent %s: %d after the purge, want it kept", ref, resp.StatusCode)
		}
	}
	evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Action: audit.ActionAgentPurge})
	if err != nil || len(evs) != 1 || evs[0].AgentID != squatter.ID || !strings.Contains(evs[0].Detail, "@deploy-bot") {
		t.Errorf("purge audit events = %+v, %v; want one for %s naming @deploy-bot", evs, err, squatter.ID)
	}
	if err := ts.Srv.Store().VerifyChain(t.Context()); err != nil {
		t.Error(err)
	}
}

func (ts *testServer) agentIDOf(t *testing.T, ref string) string {
	t.Helper()
	req := mustReq(t, "GET", ts.URL+"/v1/agents/"+ref)
	req.Header.Set("Authorization", "Bearer "+ts.Admin)
	resp, body := ts.do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get agent %s: %d %v", ref, resp.StatusCode, body)
	}
	return body["agent_id"].(string)
}

// claimCodeRequest is a request for a new claim code for agent id, signed by key with kid.
func (ts *testServer) claimCodeRequest(t *testing.T, a *testAgent, typ, jti string) string {
	now := ts.Clock.Now()
	return signJWS(t, a.Key, a.DID, typ, map[string]any{
		"sub": a.ID, "aud": ts.URL, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(), "jti": jti,
	})
}

func (ts *testServer) claimCode(t *testing.T, a *testAgent, jti string) (*http.Response, map[string]any) {
	t.Helper()
	return ts.postClaimCode(t, a.ID, ts.claimCodeRequest(t, a, "mandate-claim-code+jwt", jti))
}

func (ts *testServer) postClaimCode(t *testing.T, id, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.URL+"/v1/agents/"+id+"/claim-code", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/jose")
	return ts.do(t, req)
}

// TestNewClaimCode: an agent whose claim code lapsed asks for a new one with a request signed
// by its own key, and its owner claims it with that code; the old code never works again; only
// the agent's current key, once, for an UNCLAIMED agent, may ask.
func TestNewClaimCode(t *testing.T) {
	ts := newTestServer(t)
	a := ts.newAgent(t, "slow-owner", false)
	ts.Clock.Advance(16 * time.Minute)
	if resp, body := ts.claim(t, ts.Admin, a.Code); resp.StatusCode != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "mandate agent claim-code") {
		t.Fatalf("claim with the lapsed code: %d %v; want 400 naming mandate agent claim-code", resp.StatusCode, body)
	}

	other := &testAgent{ID: a.ID}
	other.Key, other.DID = newKey(t)
	jti := randomID()
	for _, tc := range []struct {
		name   string
		body   string
		status int
		reason string
	}{
		{"signed by another key", ts.claimCodeRequest(t, other, "mandate-claim-code+jwt", randomID()), http.StatusForbidden, "key_mismatch"},
		{"a registration's typ", ts.claimCodeRequest(t, a, "mandate-registration+jwt", randomID()), http.StatusBadRequest, "typ"},
		{"not a JWS", "hello", http.StatusBadRequest, "malformed"},
		{"for another agent", ts.claimCodeRequest(t, &testAgent{ID: "agt_other", Key: a.Key, DID: a.DID}, "mandate-claim-code+jwt", randomID()), http.StatusBadRequest, "sub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := ts.postClaimCode(t, a.ID, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("%d %v, want %d", resp.StatusCode, body, tc.status)
			}
			if n, _ := auditCount(t, ts, audit.ActionAgentClaimCode, tc.reason); n == 0 {
				t.Errorf("no %s denial with reason %s", audit.ActionAgentClaimCode, tc.reason)
			}
			// Until its signature verifies, the request is nobody's: an anonymous refusal.
			evs, _ := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Action: audit.ActionAgentClaimCode, Limit: 1})
			if tc.reason != "sub" && (len(evs) != 1 || evs[0].ActorType != audit.ActorAnonymous || evs[0].ActorID != "") {
				t.Errorf("refusal recorded as %+v, want an anonymous one", evs)
			}
		})
	}

	resp, body := ts.claimCode(t, a, jti)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("new claim code: %d %v", resp.StatusCode, body)
	}
	code, _ := body["claim_code"].(string)
	if code == "" || code == a.Code || body["agent_id"] != a.ID || body["status"] != "UNCLAIMED" {
		t.Fatalf("new claim code answer %v", body)
	}
	if resp, _ := ts.postClaimCode(t, a.ID, ts.claimCodeRequest(t, a, "mandate-claim-code+jwt", jti)); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed request: %d, want 400", resp.StatusCode)
	}
	if resp, body := ts.claim(t, ts.Admin, code); resp.StatusCode != http.StatusOK || body["status"] != "CLAIMED" {
		t.Fatalf("claim with the new code: %d %v", resp.StatusCode, body)
	}
	if resp, _ := ts.claimCode(t, a, randomID()); resp.StatusCode != http.StatusConflict {
		t.Errorf("new claim code for a CLAIMED agent: %d, want 409", resp.StatusCode)
	}
	if evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Action: audit.ActionAgentClaimCode, Outcome: audit.OutcomeSuccess}); err != nil || len(evs) != 1 || evs[0].AgentID != a.ID {
		t.Errorf("audit of the new claim code = %+v, %v; want one success for %s", evs, err, a.ID)
	}
}

// TestAnonymousDenialFlood: 1,000 garbage token requests and 200 proxy calls to an unknown
// upstream from one address write a bounded number of audit rows whose counts add up to
// 1,000 and 200, each naming the address; the chain verifies.
func TestAnonymousDenialFlood(t *testing.T) {
	ts := newTestServer(t)
	garbage := []struct {
		form  url.Values
		proof string
	}{
		{url.Values{"grant_type": {"client_credentials"}}, ""},             // no DPoP
		{url.Values{"grant_type": {"client_credentials"}}, "not.a.jwt"},    // a garbage proof
		{url.Values{"grant_type": {"password"}, "username": {"root"}}, ""}, // no such grant
	}
	for i := range 1000 {
		g := garbage[i%len(garbage)]
		if resp, body := ts.tokenRequest(t, g.form, g.proof); resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("garbage token request %d: %d %v", i, resp.StatusCode, body)
		}
	}
	for i := range 200 {
		req := mustReq(t, "GET", ts.URL+"/proxy/no-such-upstream/v1/x")
		req.Header.Set("Authorization", "DPoP garbage")
		if resp, _ := ts.do(t, req); resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("proxy call %d: %d", i, resp.StatusCode)
		}
	}
	ts.Srv.FlushDenials(context.WithoutCancel(t.Context()))

	for _, tc := range []struct {
		action string
		want   int64
	}{{audit.ActionTokenDeny, 1000}, {"proxy.call", 200}} {
		rows, total := auditCount(t, ts, tc.action, "")
		// The first 30 from the address one by one, then one count per kind of refusal.
		if total != tc.want || rows > 30+len(garbage) {
			t.Errorf("%s: %d rows counting %d refusals, want %d in at most %d rows", tc.action, rows, total, tc.want, 30+len(garbage))
		}
	}
	evs, err := ts.Srv.Store().ListEvents(t.Context(), audit.Filter{Outcome: audit.OutcomeDenied, Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	aggregated := 0
	for _, ev := range evs {
		if ev.ActorType == audit.ActorAnonymous && ev.Source != "127.0.0.1" {
			t.Errorf("anonymous denial %s %s from %q, want 127.0.0.1", ev.Action, ev.Reason, ev.Source)
		}
		if ev.Count > 0 {
			aggregated++
			if ev.First.IsZero() || ev.Last.Before(ev.First) || ev.RequestID == "" {
				t.Errorf("aggregated event %+v: want first <= last and the last request id", ev)
			}
		}
	}
	if aggregated == 0 {
		t.Error("no aggregated event")
	}
	// The audit API shows the counts.
	req := mustReq(t, "GET", ts.URL+"/v1/audit?action=token.deny&limit=1000")
	req.Header.Set("Authorization", "Bearer "+ts.Admin)
	resp, body := ts.do(t, req)
	if resp.StatusCode != http.StatusOK || !strings.Contains(fmt.Sprint(body), "count:") || !strings.Contains(fmt.Sprint(body), "source:127.0.0.1") {
		t.Errorf("GET /v1/audit: %d; want events with count and source", resp.StatusCode)
	}
	if err := ts.Srv.Store().VerifyChain(t.Context()); err != nil {
		t.Error(err)
	}
}
