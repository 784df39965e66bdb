package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/dpop"
)

// TestProxyNarrowedDetails is issue 9's case end to end: a grant allows recipients "example.*",
// a task narrowed by token exchange to "example.attacker.test" may send there, and so may the
// task it was narrowed from (the proxy reads "*" as narrowing does); neither reaches another
// domain.
func TestProxyNarrowedDetails(t *testing.T) {
	ts := newTestServer(t)
	key := "sk_live_" + randomID()
	var got []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		var b struct{ To string }
		json.NewDecoder(r.Body).Decode(&b)
		got = append(got, b.To)
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(up.Close)
	resp, out := ts.adminJSON(t, "POST", "/v1/upstreams", map[string]any{
		"name": "mail", "base_url": up.URL, "auth": "bearer", "allow_private": true,
		"routes": []map[string]any{{"scope": "mail:send", "methods": []string{"POST"}, "paths": []string{"/v1/send"},
			"body": []map[string]any{{"detail": "recipient_domains", "pointer": "/to", "match": "email_domain"}}}},
	})
	if resp.StatusCode != 201 {
		t.Fatalf("add upstream: %d %v", resp.StatusCode, out)
	}
	if resp, out := ts.adminJSON(t, "PUT", "/v1/upstreams/mail/secrets/credential", map[string]string{"secret": key}); resp.StatusCode != 204 {
		t.Fatalf("set secret: %d %v", resp.StatusCode, out)
	}
	a := ts.newAgent(t, "mailer", true)
	grantID := ts.grant(t, map[string]any{"agent": a.ID, "scopes": []string{"mail:send"}, "resources": []string{ts.URL + "/proxy/mail"},
		"authorization_details": []any{map[string]any{"type": "mail", "recipient_domains": "example.*"}},
		"max_depth":             2, "allow_subdelegation": true})
	parent := ts.startTask(t, a, ts.grantToken(t, a, grantID))
	resp, out = ts.exchange(t, a.Key, url.Values{"subject_token": {parent}, "subject_token_type": {tokenTypeAccess},
		"authorization_details": {`[{"type":"mail","recipient_domains":"example.attacker.test"}]`}})
	if resp.StatusCode != 200 {
		t.Fatalf("narrow: %d %v", resp.StatusCode, out)
	}
	child := out["access_token"].(string)

	send := func(tok, to string) int {
		u := ts.URL + "/proxy/mail/v1/send"
		req, _ := http.NewRequest("POST", u, strings.NewReader(`{"to":"`+to+`"}`))
		p, err := dpop.NewProof(a.Key, "POST", u, dpop.ProofOptions{AccessToken: tok, Now: ts.Clock.Now()})
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", p)
		req.Header.Set("Content-Type", "application/json")
		resp, err := ts.HC.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		who, tok, to string
		want         int
	}{
		{"narrowed task", child, "a@example.attacker.test", 200},
		{"narrowed task", child, "a@example.com", 403},
		{"narrowed task", child, "x@evil.test", 403},
		{"the task it came from", parent, "a@example.attacker.test", 200},
		{"the task it came from", parent, "a@example.com", 200},
		{"the task it came from", parent, "x@evil.test", 403},
	} {
		if s := send(tc.tok, tc.to); s != tc.want {
			t.Errorf("%s to %s: %d, want %d", tc.who, tc.to, s, tc.want)
		}
	}
	if strings.Contains(strings.Join(got, " "), "evil") {
		t.Errorf("the upstream received %q", got)
	}
}
