package server_test

import (
	"crypto"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

const grantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// jwtBearer trades an assertion at the token endpoint, with a DPoP proof by key when key is not
// nil (retrying once for a nonce, as a client does).
func (ts *testServer) jwtBearer(t testing.TB, assertion string, key crypto.Signer, extra url.Values) (*http.Response, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {grantJWTBearer}, "assertion": {assertion}}
	for k, v := range extra {
		form[k] = v
	}
	for try := 0; try < 2; try++ {
		proof := ""
		if key != nil {
			proof = ts.proof(t, key, "POST", ts.URL+"/oauth/token", "")
		}
		resp, out := ts.tokenRequest(t, form, proof)
		if out["error"] != "use_dpop_nonce" {
			return resp, out
		}
	}
	t.Fatal("jwt-bearer: nonce retry failed")
	return nil, nil
}

// auditOf returns the events of one request id, as an admin sees them with mandate audit.
func (ts *testServer) auditOf(t testing.TB, requestID string) []map[string]any {
	t.Helper()
	resp, out := ts.adminJSON(t, "GET", "/v1/audit?request_id="+url.QueryEscape(requestID), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("audit: %d %v", resp.StatusCode, out)
	}
	var evs []map[string]any
	for _, e := range out["events"].([]any) {
		evs = append(evs, e.(map[string]any))
	}
	return evs
}

// svcAccount creates a service account as the admin and returns its id.
func (ts *testServer) svcAccount(t testing.TB, name string) string {
	t.Helper()
	resp, out := ts.adminJSON(t, "POST", "/v1/service-accounts", map[string]any{"name": name})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create service account %s: %d %v", name, resp.StatusCode, out)
	}
	return out["id"].(string)
}

// trust adds the test issuer (discovery) with edits to the request body.
func (ts *testServer) trust(t testing.TB, is *oidctest.Issuer, edit map[string]any) {
	t.Helper()
	body := map[string]any{"issuer": is.URL}
	for k, v := range edit {
		body[k] = v
	}
	if resp, out := ts.adminJSON(t, "POST", "/v1/federation/issuers", body); resp.StatusCode != http.StatusCreated {
		t.Fatalf("add issuer: %d %v", resp.StatusCode, out)
	}
}

// rule adds a federation rule and returns its id.
func (ts *testServer) rule(t testing.TB, body map[string]any) string {
	t.Helper()
	resp, out := ts.adminJSON(t, "POST", "/v1/federation/rules", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("add rule: %d %v", resp.StatusCode, out)
	}
	return out["id"].(string)
}

// docExample is one `mandate federation rules add` block of docs/federation.md.
type docExample struct {
	name  string
	flags map[string][]string
}

// docExamples reads the tested example rules from docs/federation.md, so the documentation
// cannot drift from what is tested.
func docExamples(t *testing.T) []docExample {
	t.Helper()
	b, err := os.ReadFile("../../docs/federation.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []docExample
	for _, m := range regexp.MustCompile("(?s)```sh\n# example: ([a-z0-9-]+)\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		words := shellWords(t, strings.ReplaceAll(m[2], "\\\n", " "))
		if len(words) < 4 || strings.Join(words[:4], " ") != "mandate federation rules add" {
			t.Fatalf("example %s is not a mandate federation rules add command: %q", m[1], words)
		}
		ex := docExample{name: m[1], flags: map[string][]string{}}
		for i := 4; i < len(words); i++ {
			f, ok := strings.CutPrefix(words[i], "--")
			if !ok {
				t.Fatalf("example %s: %q is not a flag", m[1], words[i])
			}
			if f == "require-dpop" {
				ex.flags[f] = []string{"true"}
				continue
			}
			i++
			ex.flags[f] = append(ex.flags[f], words[i])
		}
		out = append(out, ex)
	}
	return out
}

// shellWords splits a command line the way sh does for the quoting the docs use.
func shellWords(t *testing.T, s string) []string {
	var words []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\n' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}
