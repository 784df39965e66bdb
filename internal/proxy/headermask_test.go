package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// headerLeaks lists the forms of secret in the names of hs (in any case) and in their values
// read without spaces and tabs.
func headerLeaks(secret string, hs ...http.Header) []string {
	var out []string
	for _, h := range hs {
		for k, vs := range h {
			for _, f := range echoedForms(secret) {
				if strings.Contains(strings.ToLower(k), strings.ToLower(f)) {
					out = append(out, fmt.Sprintf("the name %q holds %q", k, f))
				}
			}
			for _, v := range vs {
				if f, ok := containsForm([]byte(strings.NewReplacer(" ", "", "\t", "").Replace(v)), secret); ok {
					out = append(out, fmt.Sprintf("%s: %q holds %q", k, v, f))
				}
			}
		}
	}
	return out
}

// TestHeaderNamesMasked: an upstream names headers, early hints and trailers with a form of the
// credential (which arrive in canonical case); none reaches the agent.
func TestHeaderNamesMasked(t *testing.T) {
	e := echoEnv(t)
	secret := oracleSecrets[0]
	e.creds.secret.Store(&secret)
	var names []string
	for _, f := range echoedForms(secret) {
		for _, n := range []string{f, strings.ToUpper(f), "X-" + f + "-Y"} {
			if !strings.ContainsAny(n, "=%\\/+\"(),:;<>?@[]{} ") {
				names = append(names, n)
			}
		}
	}
	if len(names) < 5 {
		t.Fatalf("only %d usable names", len(names))
	}
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		for _, n := range names {
			w.Header()[n] = []string{"1"}
		}
		w.WriteHeader(http.StatusEarlyHints)
		for _, n := range names {
			w.Header()[n] = []string{"2"}
		}
		w.Header().Set("Trailer", strings.Join(names, ", "))
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "ok")
		for _, n := range names {
			w.Header()[n] = []string{"3"}
			w.Header()[http.TrailerPrefix+"P"+n] = []string{"4"}
		}
	})
	got := e.fetch(t, e.token(tokenOpts{scope: "echo:read", upstream: "echo"}), nil)
	hs := []http.Header{got.header, got.trailer}
	for _, h := range got.early {
		hs = append(hs, http.Header(h))
	}
	if len(got.early) == 0 || string(got.body) != "ok" {
		t.Fatalf("early hints %v, body %q", got.early, got.body)
	}
	for _, l := range headerLeaks(secret, hs...) {
		t.Error(l)
	}
}

// TestFoldedHeaderMasked: a header value folded across lines (obs-fold) arrives joined by a
// space, the credential cut in two; the value is masked whole. Also tabs and several folds.
func TestFoldedHeaderMasked(t *testing.T) {
	e, tok, setAnswer := rawEnv(t)
	secret := oracleSecrets[0]
	for _, form := range echoedForms(secret) {
		for _, folded := range []string{
			form[:10] + "\r\n " + form[10:],
			"a " + form[:3] + "\r\n\t" + form[3:7] + "\r\n  " + form[7:] + " b",
			form[:5] + " " + form[5:],
		} {
			setAnswer("HTTP/1.1 200 OK\r\nX-A: " + folded + "\r\nContent-Length: 2\r\n\r\nok")
			resp, err := e.client.Do(e.request("GET", "/proxy/echo/x", tok, nil))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-A") == "" {
				t.Fatalf("%q: status %d, X-A %q", folded, resp.StatusCode, resp.Header.Get("X-A"))
			}
			for _, l := range headerLeaks(secret, resp.Header) {
				t.Error(l)
			}
		}
	}
}
