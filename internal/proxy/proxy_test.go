package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/vault"
)

func TestMatchPath(t *testing.T) {
	tests := []struct {
		pattern, path string
		want          bool
	}{
		{"/emails", "/emails", true},
		{"/emails", "/emails/", false},
		{"/emails", "/emails/x", false},
		{"/emails/", "/emails/", true},
		{"/v3/site-explorer/*", "/v3/site-explorer/overview", true},
		{"/v3/site-explorer/*", "/v3/site-explorer/", false},
		{"/v3/site-explorer/*", "/v3/site-explorer/a/b", false},
		{"/v3/site-explorer/*", "/v3/site-explorer", false},
		{"/v3/*/metrics", "/v3/x/metrics", true},
		{"/v3/*/metrics", "/v3/x/y/metrics", false},
		{"/v3/**", "/v3", true},
		{"/v3/**", "/v3/", true},
		{"/v3/**", "/v3/a/b/c", true},
		{"/v3/**", "/v4/a", false},
		{"/v3/**", "/v3x", false},
		{"/**", "/", true},
		{"/**", "/anything/at/all", true},
		{"/**/x", "/a/x", false}, // ** only last
		{"/", "/", true},
		{"/a", "/b", false},
	}
	for _, tt := range tests {
		if got := matchPath(tt.pattern, tt.path); got != tt.want {
			t.Errorf("matchPath(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

// TestRoutes runs calls through the proxy and checks what the token's scopes allow.
func TestRoutes(t *testing.T) {
	e := newEnv(t)
	tests := map[string]struct {
		scope      string
		method     string
		path       string
		wantStatus int
		wantReason string
		wantPath   string // what the upstream saw
		wantScope  string // in WWW-Authenticate
	}{
		"one segment":            {scope: "api:read", method: "GET", path: "/proxy/api/v3/site-explorer/overview?target=x.com", wantStatus: 200, wantPath: "/base/v3/site-explorer/overview"},
		"rest":                   {scope: "api:read", method: "GET", path: "/proxy/api/items/a/b/c", wantStatus: 200, wantPath: "/base/items/a/b/c"},
		"escaped segment":        {scope: "api:read", method: "GET", path: "/proxy/api/items/a%20b", wantStatus: 200, wantPath: "/base/items/a b"},
		"two scopes":             {scope: "api:read api:write", method: "PUT", path: "/proxy/api/items/1", wantStatus: 200, wantPath: "/base/items/1"},
		"one segment too many":   {scope: "api:read", method: "GET", path: "/proxy/api/v3/site-explorer/a/b", wantStatus: 403, wantReason: reasonNoRoute},
		"scope without route":    {scope: "api:read", method: "POST", path: "/proxy/api/emails", wantStatus: 403, wantReason: reasonScope, wantScope: "api:send"},
		"method not allowed":     {scope: "api:read", method: "DELETE", path: "/proxy/api/items/1", wantStatus: 403, wantReason: reasonMethod},
		"method of another":      {scope: "api:read", method: "POST", path: "/proxy/api/items/1", wantStatus: 403, wantReason: reasonScope, wantScope: "api:write"},
		"no route at all":        {scope: "api:read api:write api:send", method: "GET", path: "/proxy/api/admin", wantStatus: 403, wantReason: reasonNoRoute},
		"no scopes":              {scope: "", method: "GET", path: "/proxy/api/items/1", wantStatus: 403, wantReason: reasonScope, wantScope: "api:read"},
		"unknown upstream":       {scope: "api:read", method: "GET", path: "/proxy/nope/items/1", wantStatus: 404, wantReason: reasonUnknownUpstream},
		"upstream root no slash": {scope: "api:read", method: "GET", path: "/proxy/api", wantStatus: 403, wantReason: reasonNoRoute},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			before := len(e.upstreamRequests())
			tok := e.token(tokenOpts{scope: tt.scope})
			resp, body := e.do(e.request(tt.method, tt.path, tok, nil))
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			ev := e.audit.last(t)
			if ev.Action != ActionCall {
				t.Fatalf("audit action %q", ev.Action)
			}
			reqs := e.upstreamRequests()
			if tt.wantStatus != 200 {
				if len(reqs) != before {
					t.Fatal("a refused call reached the upstream")
				}
				if ev.Outcome != audit.OutcomeDenied || ev.Reason != tt.wantReason {
					t.Errorf("audit outcome %s reason %q, want denied %q", ev.Outcome, ev.Reason, tt.wantReason)
				}
				if tt.wantStatus == 403 {
					wa := resp.Header.Get("WWW-Authenticate")
					if !strings.Contains(wa, `error="insufficient_scope"`) || !strings.Contains(wa, `resource_metadata="`+e.issuer+"/.well-known/oauth-protected-resource/proxy/api") {
						t.Errorf("WWW-Authenticate = %s", wa)
					}
					if tt.wantScope != "" && !strings.Contains(wa, `scope="`+tt.wantScope+`"`) {
						t.Errorf("WWW-Authenticate = %s, want scope %s", wa, tt.wantScope)
					}
				}
				return
			}
			if len(reqs) != before+1 {
				t.Fatalf("upstream saw %d requests, want 1", len(reqs)-before)
			}
			got := reqs[len(reqs)-1]
			if got.URL.Path != tt.wantPath {
				t.Errorf("upstream path %q, want %q", got.URL.Path, tt.wantPath)
			}
			if got.Header.Get("Authorization") != "Bearer "+realSecret {
				t.Errorf("upstream Authorization = %q", got.Header.Get("Authorization"))
			}
			if ev.Outcome != audit.OutcomeSuccess {
				t.Errorf("audit outcome %s (%s)", ev.Outcome, ev.Reason)
			}
			if strings.Contains(body, realSecret) {
				t.Error("the response holds the secret")
			}
		})
	}
	for _, r := range e.upstreamRequests() {
		if r.URL.Path == "/base/v3/site-explorer/overview" && r.URL.RawQuery != "target=x.com" {
			t.Errorf("query forwarded as %q", r.URL.RawQuery)
		}
	}
}

func TestBodyRules(t *testing.T) {
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.MaxBodyRuleBytes = 4096 }})
	detail := map[string]any{"type": "api", "recipient_domains": []string{"example.com", "*.corp.example"},
		"from": []string{"bot@example.com", "alerts@example.com"}, "subject_prefix": "[bot] ", "max_amount": 100}
	other := map[string]any{"type": "api", "recipient_domains": []string{"partner.example"}}
	tests := map[string]struct {
		details  []map[string]any
		body     string
		encoding string
		want     int
		reason   string
	}{
		"all match":                {details: []map[string]any{detail}, body: `{"to":["a@example.com","b@x.corp.example"],"from":"bot@example.com","subject":"[bot] hi","items":[{"amount":10},{"amount":100}]}`, want: 200},
		"named address":            {details: []map[string]any{detail}, body: `{"to":"Ann <ann@EXAMPLE.com>"}`, want: 200},
		"no details: no narrowing": {details: nil, body: `{"to":"x@evil.example"}`, want: 200},
		"detail of other type":     {details: []map[string]any{{"type": "other", "recipient_domains": []string{"example.com"}}}, body: `{"to":"x@evil.example"}`, want: 200},
		"email_domain outside":     {details: []map[string]any{detail}, body: `{"to":["a@example.com","x@evil.example"]}`, want: 403, reason: reasonBodyRule},
		"email_domain in cc":       {details: []map[string]any{detail}, body: `{"to":"a@example.com","cc":"x@evil.example"}`, want: 403, reason: reasonBodyRule},
		"email_domain apex of *.":  {details: []map[string]any{detail}, body: `{"to":"a@corp.example"}`, want: 403, reason: reasonBodyRule},
		"email_domain suffix trap": {details: []map[string]any{detail}, body: `{"to":"a@evilexample.com"}`, want: 403, reason: reasonBodyRule},
		"email list in one string": {details: []map[string]any{detail}, body: `{"to":"a@example.com, x@evil.example"}`, want: 403, reason: reasonBodyRule},
		"email not a string":       {details: []map[string]any{detail}, body: `{"to":{"email":"x@evil.example"}}`, want: 403, reason: reasonBodyRule},
		"equals outside":           {details: []map[string]any{detail}, body: `{"from":"ceo@example.com"}`, want: 403, reason: reasonBodyRule},
		"prefix outside":           {details: []map[string]any{detail}, body: `{"subject":"hi [bot] "}`, want: 403, reason: reasonBodyRule},
		"max outside":              {details: []map[string]any{detail}, body: `{"items":[{"amount":10},{"amount":100.5}]}`, want: 403, reason: reasonBodyRule},
		"max exponent":             {details: []map[string]any{detail}, body: `{"items":[{"amount":1e3}]}`, want: 403, reason: reasonBodyRule},
		"max huge exponent":        {details: []map[string]any{detail}, body: `{"items":[{"amount":1e999999999}]}`, want: 403, reason: reasonBodyRule},
		"max not a number":         {details: []map[string]any{detail}, body: `{"items":[{"amount":"5"}]}`, want: 403, reason: reasonBodyRule},
		"second detail allows":     {details: []map[string]any{detail, other}, body: `{"to":"p@partner.example"}`, want: 200},
		"duplicate member":         {details: []map[string]any{detail}, body: `{"to":"a@example.com","to":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"member differing by case": {details: []map[string]any{detail}, body: `{"to":"a@example.com","TO":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"case variant alone":       {details: []map[string]any{detail}, body: `{"To":"x@evil.example"}`, want: 403, reason: reasonBodyRule},
		"not JSON":                 {details: []map[string]any{detail}, body: `to=x@evil.example`, want: 400, reason: reasonBodyInvalid},
		"trailing data":            {details: []map[string]any{detail}, body: `{"to":"a@example.com"} {"to":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"too large":                {details: []map[string]any{detail}, body: `{"to":"a@example.com","pad":"` + strings.Repeat("x", 5000) + `"}`, want: 413, reason: reasonBodyTooLarge},
		"compressed":               {details: []map[string]any{detail}, body: `{}`, encoding: "gzip", want: 415, reason: reasonBodyEncoding},
		"absent fields pass":       {details: []map[string]any{detail}, body: `{"text":"hello"}`, want: 200},
		"top-level array":          {details: []map[string]any{detail}, body: `[{"to":"x@evil.example"}]`, want: 400, reason: reasonBodyInvalid},
		// A value of the wrong type anywhere on a pointer's way refuses: an upstream may read it leniently.
		"object where * wants an array": {details: []map[string]any{detail}, body: `{"items":{"amount":1000}}`, want: 403, reason: reasonBodyRule},
		"object of index members":       {details: []map[string]any{detail}, body: `{"items":{"0":{"amount":1000}}}`, want: 403, reason: reasonBodyRule},
		"array in an array":             {details: []map[string]any{detail}, body: `{"items":[[{"amount":1000}]]}`, want: 403, reason: reasonBodyRule},
		"array among elements":          {details: []map[string]any{detail}, body: `{"items":[{"amount":1},[{"amount":1000}]]}`, want: 403, reason: reasonBodyRule},
		"string where * wants an array": {details: []map[string]any{detail}, body: `{"items":"[{\"amount\":1000}]"}`, want: 403, reason: reasonBodyRule},
		"number where an object is due": {details: []map[string]any{detail}, body: `{"items":[5]}`, want: 403, reason: reasonBodyRule},
		"nulls and absent members pass": {details: []map[string]any{detail}, body: `{"items":[null,{"x":1},{"amount":null},{"amount":5}]}`, want: 200},
		"null where * wants an array":   {details: []map[string]any{detail}, body: `{"items":null}`, want: 200},
		// Member names that would reach a JavaScript prototype, or read as another name.
		"__proto__":                  {details: []map[string]any{detail}, body: `{"__proto__":{"to":"x@evil.example"}}`, want: 400, reason: reasonBodyInvalid},
		"__proto__ deep":             {details: []map[string]any{detail}, body: `{"a":[{"__proto__":1}]}`, want: 400, reason: reasonBodyInvalid},
		"constructor.prototype":      {details: []map[string]any{detail}, body: `{"constructor":{"prototype":{"to":"x@evil.example"}}}`, want: 400, reason: reasonBodyInvalid},
		"prototype holding an array": {details: []map[string]any{detail}, body: `{"Prototype":[]}`, want: 400, reason: reasonBodyInvalid},
		"constructor as a string":    {details: []map[string]any{detail}, body: `{"constructor":"x","prototype":1}`, want: 200},
		"full-width name":            {details: []map[string]any{detail}, body: `{"ｔｏ":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"zero-width space in a name": {details: []map[string]any{detail}, body: `{"to\u200b":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"no-break space in a name":   {details: []map[string]any{detail}, body: `{"to\u00a0":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"tab in a name":              {details: []map[string]any{detail}, body: `{"to\t":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"combining accent in a name": {details: []map[string]any{detail}, body: `{"to\u0301":"x@evil.example"}`, want: 400, reason: reasonBodyInvalid},
		"plain non-ASCII and spaces": {details: []map[string]any{detail}, body: `{"naïve name":"é","to":"José <jose@example.com>"}`, want: 200},
		"punycode domain":            {details: []map[string]any{detail}, body: `{"to":"a@xn--bcher-kva.corp.example"}`, want: 200},
	}
	// Addresses an upstream could split or read as another domain: none is one plain address
	// whose domain is a hostname.
	for i, to := range []string{`x@evil.com\u00a0.corp.example`, `x@evil.com\u0085.corp.example`, `x@evil.com\u3000.corp.example`,
		`x@evil.com\u2028.corp.example`, `x@evil.com\u200b.corp.example`, `x@evil.com\uff0c.corp.example`, `x@evil.com?.corp.example`,
		`x@evil.com/.corp.example`, `x@evil.com!.corp.example`, `x@evil.com%00.corp.example`, `x@-.corp.example`, `x@a-.corp.example`,
		`x@` + strings.Repeat("a", 64) + `.corp.example`, `x@` + strings.Repeat("a.", 125) + `corp.example`, `x@a_b.corp.example`,
		`x@[10.0.0.1]`, `x@10.0.0.1`, `x@bücher.corp.example`, `x@evil.com\uff0ea.corp.example`,
		`x\u2028y@a.corp.example`, `x\u00a0y@a.corp.example`, `x\uff20evil.com.y@a.corp.example`, `\"x@evil.com\"@a.corp.example`, `\"x y\"@a.corp.example`,
		`\"x@evil.com\" <a@b.corp.example>`, `=?utf-8?q?x=40evil.com?= <a@b.corp.example>`, `a@b.corp.example (x)`, `a@b.corp.example(.evil.com)`,
		`Ann\u2028Bee <a@b.corp.example>`, `Ann\uff0c x <a@b.corp.example>`} {
		tests[fmt.Sprintf("address %d %s", i, to)] = struct {
			details  []map[string]any
			body     string
			encoding string
			want     int
			reason   string
		}{details: []map[string]any{detail}, body: `{"to":"` + to + `"}`, want: 403, reason: reasonBodyRule}
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			before := len(e.upstreamRequests())
			tok := e.token(tokenOpts{scope: "api:send", details: tt.details})
			req := e.request("POST", "/proxy/api/emails", tok, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			if tt.encoding != "" {
				req.Header.Set("Content-Encoding", tt.encoding)
			}
			resp, body := e.do(req)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			ev := e.audit.last(t)
			reqs := e.upstreamRequests()
			if tt.want != 200 {
				if len(reqs) != before {
					t.Fatal("a refused body reached the upstream")
				}
				if ev.Reason != tt.reason || ev.Outcome != audit.OutcomeDenied {
					t.Errorf("audit %s %q, want denied %q", ev.Outcome, ev.Reason, tt.reason)
				}
				if strings.Contains(ev.Detail, "evil") {
					t.Errorf("the audit detail holds a body value: %s", ev.Detail)
				}
				return
			}
			e.upMu.Lock()
			got := string(e.upBody[len(e.upBody)-1])
			e.upMu.Unlock()
			if got != tt.body {
				t.Errorf("upstream body %q, want %q", got, tt.body)
			}
		})
	}
}

func TestSelfTokenRefused(t *testing.T) {
	e := newEnv(t)
	resp, body := e.do(e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: "-"}), nil))
	if resp.StatusCode != 403 || !strings.Contains(body, "task token") {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ev := e.audit.last(t); ev.Reason != reasonSelfToken || ev.AgentID != "agt_1" {
		t.Errorf("audit %+v", ev)
	}
	if len(e.upstreamRequests()) != 0 {
		t.Error("reached the upstream")
	}
}

func TestTokenRefusals(t *testing.T) {
	e := newEnv(t)
	e.tasks.put(delegation.Task{ID: "tsk_done", Status: delegation.TaskCompleted, ExpiresAt: time.Now().Add(time.Hour)})
	e.tasks.put(delegation.Task{ID: "tsk_old", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(-time.Second)})
	tests := map[string]struct {
		req        func() *http.Request
		wantStatus int
		wantReason string
		wantError  string
	}{
		"no token": {req: func() *http.Request { return e.request("GET", "/proxy/api/items/1", "", nil) }, wantStatus: 401, wantReason: "token_missing"},
		"bearer": {req: func() *http.Request {
			r := e.request("GET", "/proxy/api/items/1", "", nil)
			r.Header.Set("Authorization", "Bearer "+e.token(tokenOpts{scope: "api:read"}))
			return r
		}, wantStatus: 401, wantReason: "token_bearer", wantError: "invalid_token"},
		"audience of another upstream": {req: func() *http.Request {
			return e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", aud: e.issuer + "/proxy/other"}), nil)
		}, wantStatus: 401, wantReason: "token_audience", wantError: "invalid_token"},
		"proof for another URL": {req: func() *http.Request {
			tok := e.token(tokenOpts{scope: "api:read"})
			r := e.request("GET", "/proxy/api/items/2", tok, nil)
			r2 := e.request("GET", "/proxy/api/items/1", tok, nil)
			r2.Header.Set("DPoP", r.Header.Get("DPoP"))
			return r2
		}, wantStatus: 401, wantError: "invalid_dpop_proof"},
		"ended task": {req: func() *http.Request {
			return e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: "tsk_done"}), nil)
		}, wantStatus: 401, wantReason: reasonTaskEnded, wantError: "invalid_token"},
		"expired task": {req: func() *http.Request {
			return e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: "tsk_old"}), nil)
		}, wantStatus: 401, wantReason: reasonTaskEnded, wantError: "invalid_token"},
		"unknown task": {req: func() *http.Request {
			return e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: "tsk_nope"}), nil)
		}, wantStatus: 401, wantReason: reasonTaskEnded, wantError: "invalid_token"},
		"revoked grant": {req: func() *http.Request {
			return e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read"}), nil)
		}, wantStatus: 401, wantReason: "token_revoked", wantError: "invalid_token"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			req := tt.req()
			if name == "revoked grant" {
				e.status.revoke("gr_1")
				defer func() { e.status.mu.Lock(); delete(e.status.revoked, "gr_1"); e.status.mu.Unlock() }()
			}
			resp, body := e.do(req)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			wa := resp.Header.Get("WWW-Authenticate")
			if !strings.HasPrefix(wa, "DPoP ") || !strings.Contains(wa, "resource_metadata=") {
				t.Errorf("WWW-Authenticate = %q", wa)
			}
			if tt.wantError != "" && !strings.Contains(wa, `error="`+tt.wantError+`"`) {
				t.Errorf("WWW-Authenticate = %q, want error %s", wa, tt.wantError)
			}
			ev := e.audit.last(t)
			if tt.wantReason != "" && ev.Reason != tt.wantReason {
				t.Errorf("audit reason %q, want %q", ev.Reason, tt.wantReason)
			}
			if ev.Outcome != audit.OutcomeDenied {
				t.Errorf("audit outcome %s", ev.Outcome)
			}
		})
	}
	if n := len(e.upstreamRequests()); n != 0 {
		t.Errorf("%d refused calls reached the upstream", n)
	}
}

func TestBudget(t *testing.T) {
	e := newEnv(t)
	e.tasks.put(delegation.Task{ID: "tsk_b", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour),
		Budget: map[string]int64{"calls": 4, "calls:api": 3, "max_request_bytes": 10}})
	call := func(body string, chunked bool) (int, string) {
		var req *http.Request
		if body == "" {
			req = e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read api:write", task: "tsk_b"}), nil)
		} else {
			req = e.request("POST", "/proxy/api/upload", e.token(tokenOpts{scope: "api:read api:write", task: "tsk_b"}), strings.NewReader(body))
			if chunked {
				req.ContentLength = -1
				req.Body = io.NopCloser(strings.NewReader(body))
			}
		}
		resp, b := e.do(req)
		return resp.StatusCode, b
	}
	if s, b := call(strings.Repeat("x", 11), false); s != 413 {
		t.Fatalf("11 bytes with Content-Length: %d %s", s, b)
	}
	// Without a Content-Length the body is counted while it streams: the call was admitted
	// (and counted against the budget) before the body turned out too large.
	if s, b := call(strings.Repeat("x", 11), true); s != 413 {
		t.Fatalf("11 bytes chunked: %d %s", s, b)
	}
	if ev := e.audit.last(t); ev.Reason != reasonRequestTooLarge {
		t.Errorf("audit reason %q", ev.Reason)
	}
	if s, b := call("", false); s != 200 {
		t.Fatalf("first call: %d %s", s, b)
	}
	if s, b := call(strings.Repeat("x", 10), true); s != 200 {
		t.Fatalf("second call, 10 bytes chunked: %d %s", s, b)
	}
	s, b := call("", false)
	if s != 429 || !strings.Contains(b, "budget of 3 calls to api") {
		t.Fatalf("third call: %d %s", s, b)
	}
	if ev := e.audit.last(t); ev.Reason != reasonBudget || ev.Outcome != audit.OutcomeDenied {
		t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
	}
}

// TestBudgetGrantTotal: the grant's calls count the calls of all its tasks; the task that
// finds it spent is refused with a sentence naming the grant, and nothing reaches the upstream.
func TestBudgetGrantTotal(t *testing.T) {
	e := newEnv(t)
	e.tasks.putGrant(delegation.Grant{ID: "gr_t", Status: delegation.GrantActive, Limits: delegation.Limits{Budget: map[string]int64{"calls": 2}}})
	for _, id := range []string{"tsk_x", "tsk_y"} {
		e.tasks.put(delegation.Task{ID: id, GrantID: "gr_t", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour),
			Budget: map[string]int64{"calls": 2}})
	}
	var got []int
	var last string
	for _, id := range []string{"tsk_x", "tsk_y", "tsk_x", "tsk_y"} {
		resp, b := e.do(e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: id}), nil))
		got, last = append(got, resp.StatusCode), b
	}
	if fmt.Sprint(got) != "[200 200 429 429]" || len(e.upstreamRequests()) != 2 {
		t.Fatalf("calls of two tasks under calls=2: %v, upstream saw %d", got, len(e.upstreamRequests()))
	}
	if !strings.Contains(last, "grant gr_t's budget of 2 calls through the proxy, shared by all its tasks, is used up") {
		t.Errorf("refusal: %s", last)
	}
}

// TestBudgetConcurrent: 50 concurrent calls against a budget of 10; exactly 10 succeed.
func TestBudgetConcurrent(t *testing.T) {
	e := newEnv(t)
	e.tasks.put(delegation.Task{ID: "tsk_c", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour),
		Budget: map[string]int64{"calls": 10}})
	reqs := make([]*http.Request, 50)
	for i := range reqs {
		reqs[i] = e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read", task: "tsk_c"}), nil)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
	)
	start := make(chan struct{})
	for _, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := e.client.Do(r)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if diff := cmp.Diff(map[int]int{200: 10, 429: 40}, codes); diff != "" {
		t.Errorf("status counts (-want +got):\n%s", diff)
	}
	if n := len(e.upstreamRequests()); n != 10 {
		t.Errorf("upstream saw %d calls, want 10", n)
	}
}

// TestPathRefused: traversal, encoded traversal, absolute URLs and Host overrides are refused
// with 400 before anything else, each with an audit event.
func TestPathRefused(t *testing.T) {
	e := newEnv(t)
	tests := map[string]struct {
		line    string
		headers []string
		want    int
		reason  string
	}{
		"dot dot":                {line: "GET /proxy/api/items/../admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"dot dot out of proxy":   {line: "GET /proxy/api/../other/x HTTP/1.1", want: 400, reason: reasonBadPath},
		"dot":                    {line: "GET /proxy/api/./items/1 HTTP/1.1", want: 400, reason: reasonBadPath},
		"trailing dot dot":       {line: "GET /proxy/api/items/.. HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded dots":           {line: "GET /proxy/api/items/%2e%2e/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded dots upper":     {line: "GET /proxy/api/items/%2E%2E/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"half encoded":           {line: "GET /proxy/api/items/.%2e/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded slash":          {line: "GET /proxy/api/items%2f..%2fadmin HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded backslash":      {line: "GET /proxy/api/items/..%5cadmin HTTP/1.1", want: 400, reason: reasonBadPath},
		"double encoded":         {line: "GET /proxy/api/items/%252e%252e/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"backslash":              {line: "GET /proxy/api/items\\..\\admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded NUL":            {line: "GET /proxy/api/items/a%00b HTTP/1.1", want: 400, reason: reasonBadPath},
		"overlong dot":           {line: "GET /proxy/api/items/%c0%ae%c0%ae/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"dot dot with params":    {line: "GET /proxy/api/items/..;/admin HTTP/1.1", want: 400, reason: reasonBadPath},
		"empty segment":          {line: "GET /proxy/api//items/1 HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded name":           {line: "GET /proxy/%61pi/items/1 HTTP/1.1", want: 400, reason: reasonBadPath},
		"encoded prefix slash":   {line: "GET /proxy%2fapi/items/1 HTTP/1.1", want: 400, reason: reasonBadPath},
		"absolute URL":           {line: "GET http://evil.example/proxy/api/items/1 HTTP/1.1", want: 400, reason: reasonAbsoluteURL},
		"absolute URL same host": {line: "GET " + e.issuer + "/proxy/api/items/1 HTTP/1.1", want: 400, reason: reasonAbsoluteURL},
		"Host override":          {line: "GET /proxy/api/items/1 HTTP/1.1", headers: []string{"Host: 169.254.169.254"}, want: 400, reason: reasonHost},
		"Host override upstream": {line: "GET /proxy/api/items/1 HTTP/1.1", headers: []string{"Host: " + strings.TrimPrefix(e.up.URL, "http://")}, want: 400, reason: reasonHost},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			n := len(e.audit.all())
			if got := e.raw(tt.line, tt.headers...); got != tt.want {
				t.Fatalf("status %d, want %d", got, tt.want)
			}
			evs := e.audit.all()
			if len(evs) != n+1 {
				t.Fatalf("%d audit events, want 1", len(evs)-n)
			}
			if ev := e.audit.last(t); ev.Reason != tt.reason || ev.Outcome != audit.OutcomeDenied {
				t.Errorf("audit %s %q, want denied %q", ev.Outcome, ev.Reason, tt.reason)
			}
		})
	}
	if n := len(e.upstreamRequests()); n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
}

// TestRedirects: a redirect is returned to the agent, never followed; one to another host never
// receives the credential; one back into the upstream is rewritten to go through the proxy.
func TestRedirects(t *testing.T) {
	e := newEnv(t)
	var otherHits []http.Header
	var mu sync.Mutex
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		otherHits = append(otherHits, r.Header.Clone())
		mu.Unlock()
	}))
	defer other.Close()
	e.upstreams.put(vault.Upstream{Name: "q", BaseURL: e.up.URL, Auth: vault.AuthQuery, Param: "api_key", AllowPrivate: true,
		Routes: []vault.Route{{Scope: "q:read", Methods: []string{"GET"}, Paths: []string{"/**"}}}})
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/base/redirect/away", "/away":
			http.Redirect(w, r, other.URL+"/steal?x=1", http.StatusFound)
		case "/base/redirect/home":
			http.Redirect(w, r, "/base/items/2?a=b", http.StatusMovedPermanently)
		case "/echo":
			// an upstream that echoes the query credential into a Location
			http.Redirect(w, r, "/next?"+r.URL.RawQuery, http.StatusFound)
		}
	})
	tests := map[string]struct {
		upstream, scope, path string
		wantStatus            int
		wantLocation          string
	}{
		"other host":          {"api", "api:redirect", "/proxy/api/redirect/away", 302, other.URL + "/steal?x=1"},
		"same upstream":       {"api", "api:redirect", "/proxy/api/redirect/home", 301, e.issuer + "/proxy/api/items/2?a=b"},
		"other host, query":   {"q", "q:read", "/proxy/q/away", 302, other.URL + "/steal?x=1"},
		"credential in query": {"q", "q:read", "/proxy/q/echo?page=2", 302, e.issuer + "/proxy/q/next?page=2"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			tok := e.token(tokenOpts{scope: tt.scope, upstream: tt.upstream})
			resp, body := e.do(e.request("GET", tt.path, tok, nil))
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get("Location"); got != tt.wantLocation {
				t.Errorf("Location %q, want %q", got, tt.wantLocation)
			}
		})
	}
	// Even an agent that follows the redirect itself reaches the other host without the
	// credential: it never had it.
	resp, err := http.Get(other.URL + "/steal?x=1")
	if err == nil {
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(otherHits) != 1 {
		t.Fatalf("the other host saw %d requests, want only the agent's own 1", len(otherHits))
	}
	for _, h := range otherHits {
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, realSecret) {
					t.Errorf("the other host received the credential in %s", k)
				}
			}
		}
	}
	for _, r := range e.upstreamRequests() {
		if r.URL.Path == "/echo" && r.URL.Query().Get("api_key") != realSecret {
			t.Errorf("the query credential was not injected: %q", r.URL.RawQuery)
		}
	}
}

// TestStrippedHeaders: the agent's credentials, cookies, proxy, forwarding and hop-by-hop
// headers never reach the upstream; upstream cookies never reach the agent.
func TestStrippedHeaders(t *testing.T) {
	e := newEnv(t)
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "session=upstream-session")
		w.Header().Set("X-Upstream", "ok")
	})
	req := e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read"}), nil)
	for k, v := range map[string]string{
		"Cookie": "mandate_session=s", "Proxy-Authorization": "Basic eDp5", "Proxy-Foo": "1",
		"Forwarded": "for=1.2.3.4", "X-Forwarded-For": "1.2.3.4", "X-Forwarded-Host": "evil", "X-Forwarded-Proto": "https",
		"X-Forwarded-Port": "443", "X-Real-Ip": "1.2.3.4", "Connection": "X-Hop, keep-alive", "X-Hop": "1",
		"Keep-Alive": "timeout=5", "Te": "gzip", "Upgrade": "websocket", "Trailer": "X-T", "Via": "1.1 agent",
		"X-Keep": "kept",
	} {
		req.Header.Set(k, v)
	}
	resp, body := e.do(req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("X-Upstream") != "ok" {
		t.Errorf("response headers %v", resp.Header)
	}
	got := e.upstreamRequests()[0].Header
	for _, k := range []string{"Dpop", "Cookie", "Proxy-Authorization", "Proxy-Foo", "Forwarded", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Real-Ip", "X-Hop", "Keep-Alive", "Te", "Upgrade", "Trailer", "Via"} {
		if v, ok := got[k]; ok {
			t.Errorf("upstream received %s: %q", k, v)
		}
	}
	if got.Get("Authorization") != "Bearer "+realSecret {
		t.Errorf("upstream Authorization %q: want only the injected credential", got.Get("Authorization"))
	}
	if got.Get("X-Keep") != "kept" {
		t.Error("an ordinary header was dropped")
	}
	if c := got.Get("Connection"); c != "" && !strings.EqualFold(c, "keep-alive") {
		t.Errorf("Connection %q", c)
	}
}

func TestCredentialFailure(t *testing.T) {
	e := newEnv(t)
	e.creds.fail.Store(true)
	resp, body := e.do(e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read"}), nil))
	if resp.StatusCode != 502 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ev := e.audit.last(t); ev.Outcome != audit.OutcomeFailure || ev.Reason != reasonCredential {
		t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
	}
	if len(e.upstreamRequests()) != 0 {
		t.Error("reached the upstream without a credential")
	}
}

// TestAuditEvent: a successful call's event names the principal, agent, task, chain, upstream,
// method, route pattern, status and bytes, and holds no token, query or secret.
func TestAuditEvent(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.Metrics = reg }})
	tok := e.token(tokenOpts{scope: "api:read api:write"})
	resp, _ := e.do(e.request("PUT", "/proxy/api/items/7?secret_param=hunter2", tok, strings.NewReader("hello")))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ev := e.audit.last(t)
	want := audit.Event{Action: ActionCall, Outcome: audit.OutcomeSuccess, ActorType: audit.ActorAgent, ActorID: "agt_1",
		PrincipalID: "usr_1", AgentID: "agt_1", Target: "api"}
	got := audit.Event{Action: ev.Action, Outcome: ev.Outcome, ActorType: ev.ActorType, ActorID: ev.ActorID,
		PrincipalID: ev.PrincipalID, AgentID: ev.AgentID, Target: ev.Target}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
	if ev.TokenID == "" {
		t.Error("no token id")
	}
	for _, s := range []string{"PUT /items/** -> 200", "in 5 B"} {
		if !strings.Contains(ev.Detail, s) {
			t.Errorf("detail %q lacks %q", ev.Detail, s)
		}
	}
	for _, s := range []string{"hunter2", "secret_param", tok, realSecret, "hello", "/items/7"} {
		if strings.Contains(ev.Detail, s) || strings.Contains(ev.Reason, s) {
			t.Errorf("detail %q holds %q", ev.Detail, s)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue() + " "
			}
			v := m.GetCounter().GetValue()
			if m.GetHistogram() != nil {
				v = float64(m.GetHistogram().GetSampleCount())
			}
			found[mf.GetName()+" "+labels] = fmt.Sprint(v)
		}
	}
	wantMetrics := map[string]string{
		"mandate_proxy_calls_total outcome=success upstream=api ":           "1",
		"mandate_proxy_call_duration_seconds outcome=success upstream=api ": "1",
	}
	if diff := cmp.Diff(wantMetrics, found); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

func TestMetadata(t *testing.T) {
	e := newEnv(t)
	resp, body := e.do(e.request("GET", "/.well-known/oauth-protected-resource/proxy/api", "", nil))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"resource":                          e.issuer + "/proxy/api",
		"authorization_servers":             []any{e.issuer},
		"scopes_supported":                  []any{"api:read", "api:redirect", "api:send", "api:write"},
		"bearer_methods_supported":          []any{"header"},
		"dpop_signing_alg_values_supported": []any{"EdDSA", "Ed25519", "ES256"},
		"dpop_bound_access_tokens_required": true,
		"resource_name":                     "api",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	if resp, _ := e.do(e.request("GET", "/.well-known/oauth-protected-resource/proxy/nope", "", nil)); resp.StatusCode != 404 {
		t.Errorf("unknown upstream: %d", resp.StatusCode)
	}
}

// TestTimeouts: an upstream that stalls before its headers, or in the middle of its body.
func TestTimeouts(t *testing.T) {
	e := newEnv(t, envOpts{cfg: func(c *Config) {
		c.Timeouts = Timeouts{ResponseHeader: 200 * time.Millisecond, Idle: 300 * time.Millisecond}
	}})
	release := make(chan struct{})
	defer close(release)
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/base/items/slow-body" {
			w.WriteHeader(200)
			_, _ = w.Write([]byte("first"))
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	resp, body := e.do(e.request("GET", "/proxy/api/items/slow-headers", e.token(tokenOpts{scope: "api:read"}), nil))
	if resp.StatusCode != 504 {
		t.Fatalf("slow headers: %d %s", resp.StatusCode, body)
	}
	if ev := e.audit.last(t); ev.Reason != reasonTimeout || ev.Outcome != audit.OutcomeFailure {
		t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
	}
	n := len(e.audit.all())
	r, err := e.client.Do(e.request("GET", "/proxy/api/items/slow-body", e.token(tokenOpts{scope: "api:read"}), nil))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = readAll(r)
	if err == nil {
		t.Error("a stalled body ended cleanly")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the idle stream was cut after %v", d)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(e.audit.all()) == n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ev := e.audit.last(t); ev.Reason != reasonIdleTimeout || ev.Outcome != audit.OutcomeFailure {
		t.Errorf("audit %s %q: %s", ev.Outcome, ev.Reason, ev.Detail)
	}
}

func readAll(r *http.Response) ([]byte, error) {
	defer r.Body.Close()
	var b strings.Builder
	buf := make([]byte, 1024)
	for {
		n, err := r.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if err.Error() == "EOF" {
				return []byte(b.String()), nil
			}
			return []byte(b.String()), err
		}
	}
}

// TestReviewBypasses: what the security review found — TRACE and unknown methods never go out,
// method/URL override headers are stripped, body rules need a JSON object in a JSON body and
// refuse their field in the query, CORS grants and echoed credentials never reach the agent.
func TestReviewBypasses(t *testing.T) {
	e := newEnv(t)
	e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Link", "<https://up.example/items?page=2&auth="+r.Header.Get("Authorization")+">; rel=next")
		w.Write([]byte(`{"echo":"` + r.Header.Get("Authorization") + `"}`))
	})
	tok := e.token(tokenOpts{scope: "api:read"})
	for _, m := range []string{"TRACE", "CONNECT", "PROPFIND"} {
		resp, body := e.do(e.request(m, "/proxy/api/items/1", tok, nil))
		if resp.StatusCode == 200 || strings.Contains(body, realSecret) {
			t.Errorf("%s: %d %s, want refused", m, resp.StatusCode, body)
		}
	}
	req := e.request("GET", "/proxy/api/items/1", e.token(tokenOpts{scope: "api:read"}), nil)
	for _, h := range []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Original-URL", "X-Rewrite-URL"} {
		req.Header.Set(h, "DELETE")
	}
	resp, body := e.do(req)
	if resp.StatusCode != 200 {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
	got := e.upstreamRequests()
	for _, h := range []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override", "X-Original-Url", "X-Rewrite-Url"} {
		if v := got[len(got)-1].Header.Get(h); v != "" {
			t.Errorf("upstream received %s: %q", h, v)
		}
	}
	if strings.Contains(body, realSecret) || strings.Contains(fmt.Sprint(resp.Header), realSecret) {
		t.Errorf("the echoed credential reached the agent: %v %s", resp.Header, body)
	}
	// Masked in place: the upstream's Content-Length still holds, so the answer is not re-chunked.
	if mask := strings.Repeat("*", len(realSecret)); !strings.Contains(body, `{"echo":"Bearer `+mask+`"}`) || resp.ContentLength != int64(len(body)) {
		t.Errorf("echo = %q with Content-Length %d, want the credential masked and the length kept", body, resp.ContentLength)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("an upstream CORS grant reached the agent")
	}

	detail := map[string]any{"type": "api", "recipient_domains": []string{"example.com"}}
	for name, tc := range map[string]struct {
		path, ctype, body string
		want              int
	}{
		"form media type":     {"/proxy/api/emails", "application/x-www-form-urlencoded", `{"x":"&to=x@evil.test&y="}`, 415},
		"field in the query":  {"/proxy/api/emails?to=x@evil.test", "application/json", ``, 403},
		"json with a charset": {"/proxy/api/emails", "application/json; charset=utf-8", `{"to":"a@example.com"}`, 200},
	} {
		t.Run(name, func(t *testing.T) {
			tok := e.token(tokenOpts{scope: "api:send", details: []map[string]any{detail}})
			req := e.request("POST", tc.path, tok, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.ctype)
			if resp, body := e.do(req); resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
		})
	}
}
