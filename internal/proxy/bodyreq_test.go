package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"unicode/utf16"

	"github.com/mandate-dev/mandate/internal/vault"
)

// framework is an upstream on 127.0.0.1 that reads a request the ways real frameworks do, and
// keeps every value any of them would take for the field "to": the Content-Type from the first
// or the last header, forms, multipart, JSON in the declared charset (UTF-7, UTF-16, Latin-1),
// JSON keys up to case, cut at a NUL or with lone surrogate escapes dropped, JSON read leniently
// (lenientRead: normalised names, prototypes, objects as arrays); query and path
// parameters split on & and ;, names decoded twice, PHP/Rails brackets, qs dots, PHP's _ for .
type framework struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []http.Header // the headers of each request received
	to   [][]string    // every reading of "to", per request
	over [][]string    // every amount over 100 read at /items/*/amount, per request
}

func newFramework(t testing.TB) *framework {
	f := &framework{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		vals := readTo(r, body)
		f.mu.Lock()
		f.seen = append(f.seen, r.Header.Clone())
		f.to = append(f.to, vals)
		f.over = append(f.over, overMax(body))
		f.mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *framework) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

// isTo reports whether a parameter or key name reads as "to" in some framework.
func isTo(name string) bool {
	for range 2 {
		if d, err := url.QueryUnescape(name); err == nil {
			name = d
		}
	}
	name, _, _ = strings.Cut(name, "\x00")
	name = strings.TrimSpace(name)
	for _, n := range []string{name, strings.SplitN(name, "[", 2)[0], strings.SplitN(name, ".", 2)[0], strings.NewReplacer(".", "_", " ", "_").Replace(name)} {
		if strings.EqualFold(n, "to") {
			return true
		}
	}
	return false
}

func readTo(r *http.Request, body []byte) []string {
	var vals []string
	params := func(s string, seps string) {
		for _, p := range strings.FieldsFunc(s, func(c rune) bool { return strings.ContainsRune(seps, c) }) {
			name, v, _ := strings.Cut(p, "=")
			if isTo(name) {
				d, err := url.QueryUnescape(v)
				if err != nil {
					d = v
				}
				vals = append(vals, d)
			}
		}
	}
	params(r.URL.RawQuery, "&;")
	for _, seg := range strings.Split(r.URL.Path, "/") {
		if _, ps, ok := strings.Cut(seg, ";"); ok {
			params(ps, ";")
		}
	}
	cts := r.Header.Values("Content-Type")
	if len(cts) > 1 {
		cts = append(cts, strings.Join(cts, ", "))
	}
	for _, ct := range cts {
		for _, one := range strings.Split(ct, ",") {
			mt, ps, err := mime.ParseMediaType(one)
			if err != nil {
				mt = strings.ToLower(strings.TrimSpace(strings.Split(one, ";")[0]))
			}
			switch {
			case mt == "application/x-www-form-urlencoded":
				params(string(body), "&;")
			case strings.HasPrefix(mt, "multipart/"):
				mr := multipart.NewReader(bytes.NewReader(body), ps["boundary"])
				for p, err := mr.NextPart(); err == nil; p, err = mr.NextPart() {
					b, _ := io.ReadAll(p)
					if isTo(p.FormName()) {
						vals = append(vals, string(b))
					}
				}
			case strings.HasSuffix(mt, "json") || mt == "text/plain":
				text := decodeCharset(body, strings.ToLower(ps["charset"]))
				for _, variant := range []string{text, loneSurrogate.ReplaceAllString(text, "")} {
					var doc map[string]any
					if json.Unmarshal([]byte(variant), &doc) != nil {
						continue
					}
					for k, v := range doc {
						if isTo(k) {
							for _, x := range asStrings(v) {
								s, _ := x.(string)
								vals = append(vals, s)
							}
						}
					}
					for _, x := range lenientRead([]byte(variant), "/to") {
						s, _ := x.(string)
						vals = append(vals, s)
					}
				}
			}
		}
	}
	return vals
}

func asStrings(v any) []any {
	if list, ok := v.([]any); ok {
		return list
	}
	return []any{v}
}

// loneSurrogate is a surrogate escape, which some parsers drop.
var loneSurrogate = regexp.MustCompile(`\\u[dD][89a-fA-F][0-9a-fA-F]{2}`)

// decodeCharset decodes body as a framework would for the declared charset.
func decodeCharset(b []byte, charset string) string {
	switch charset {
	case "utf-7":
		return decodeUTF7(b)
	case "utf-16", "utf-16be", "utf-16le":
		u := make([]uint16, len(b)/2)
		for i := range u {
			if charset == "utf-16le" {
				u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
			} else {
				u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
			}
		}
		return string(utf16.Decode(u))
	case "iso-8859-1", "latin1":
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		return string(r)
	}
	return string(b)
}

// decodeUTF7 decodes RFC 2152 UTF-7: "+" base64 of UTF-16BE, ended by "-" or any other byte.
func decodeUTF7(b []byte) string {
	var out strings.Builder
	for i := 0; i < len(b); i++ {
		if b[i] != '+' {
			out.WriteByte(b[i])
			continue
		}
		j := i + 1
		for j < len(b) && strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", b[j]) >= 0 {
			j++
		}
		raw, _ := base64.RawStdEncoding.DecodeString(string(b[i+1 : j]))
		if j == i+1 {
			out.WriteByte('+')
		}
		u := make([]uint16, len(raw)/2)
		for k := range u {
			u[k] = uint16(raw[2*k])<<8 | uint16(raw[2*k+1])
		}
		out.WriteString(string(utf16.Decode(u)))
		i = j
		if j < len(b) && b[j] != '-' {
			i = j - 1
		}
	}
	return out.String()
}

// utf7 encodes s as one UTF-7 base64 run.
func utf7(s string) string {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = append(b, byte(u>>8), byte(u))
	}
	return "+" + base64.RawStdEncoding.EncodeToString(b) + "-"
}

// mailEnv is a proxy whose upstream "mail" is a framework, with body rules on /to and
// /items/*/amount for POST and GET under /send/**, and a token whose detail allows recipients at
// example.com and at subdomains of corp.example (inGrant) and amounts up to 100.
func mailEnv(t testing.TB) (*env, *framework) {
	e := newEnv(t)
	f := newFramework(t)
	e.upstreams.put(vault.Upstream{Name: "mail", BaseURL: f.srv.URL, Auth: vault.AuthBearer, AllowPrivate: true, Routes: []vault.Route{
		{Scope: "mail:send", Methods: []string{"POST", "GET", "PUT"}, Paths: []string{"/send/**"}, Body: []vault.BodyRule{
			{Detail: "recipient_domains", Pointer: "/to", Match: MatchEmailDomain},
			{Detail: "max_amount", Pointer: "/items/*/amount", Match: MatchMax},
		}},
	}})
	return e, f
}

func mailToken(e *env) string {
	return e.token(tokenOpts{scope: "mail:send", upstream: "mail", details: []map[string]any{{"type": "mail", "recipient_domains": []string{"example.com", "*.corp.example"}, "max_amount": 100}}})
}

// outsideGrant returns the first value the upstream could read for "to" that is not one address
// in the grant, or in which a lenient reading finds a domain outside it.
func outsideGrant(vals []string) (string, bool) {
	for _, v := range vals {
		if d, ok := emailDomain(v); !ok || !inGrant(d) {
			return v, true
		}
		for _, d := range lenientDomains(v) {
			if !inGrant(d) {
				return v, true
			}
		}
	}
	return "", false
}

// TestBodyReadAsUpstreamsRead: on a route with body rules, whatever the upstream parses is what
// was checked. Each request tries to get a recipient outside the grant to an upstream that reads
// requests as real frameworks do; none may arrive, and what arrives has one Content-Type.
func TestBodyReadAsUpstreamsRead(t *testing.T) {
	e, f := mailEnv(t)
	form := "application/x-www-form-urlencoded"
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("to", "x@evil.test")
	mw.Close()
	good := `{"to":"a@example.com"}`
	tests := []struct {
		name      string
		method    string
		path      string
		ctypes    []string
		encodings []string
		body      string
		chunked   bool
		want      int
		reason    string
		forwardCT string // the one Content-Type the upstream must receive
	}{
		{name: "two Content-Types, JSON first", ctypes: []string{"application/json", form}, body: `{"x":"&to=x@evil.test&y="}`, want: 415, reason: reasonBodyContentType},
		{name: "two Content-Types, form first", ctypes: []string{form, "application/json"}, body: `{"x":"&to=x@evil.test&y="}`, want: 415, reason: reasonBodyContentType},
		{name: "two equal Content-Types", ctypes: []string{"application/json", "application/json"}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "a list in one Content-Type", ctypes: []string{"application/json, " + form}, body: `{"x":"&to=x@evil.test&y="}`, want: 415, reason: reasonBodyContentType},
		{name: "charset utf-7", ctypes: []string{"application/json; charset=utf-7"}, body: `{"x":"` + utf7(`","to":"`) + `x@evil.test` + utf7(`","y":"`) + `"}`, want: 415, reason: reasonBodyContentType},
		{name: "charset latin-1", ctypes: []string{"application/json; charset=iso-8859-1"}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "charset utf-16", ctypes: []string{"application/json; charset=utf-16"}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "charset in RFC 2231 form", ctypes: []string{"application/json; charset*=utf-8''utf-7"}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "unknown parameter", ctypes: []string{"application/json; boundary=x"}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "not a media type", ctypes: []string{"application/json; ="}, body: good, want: 415, reason: reasonBodyContentType},
		{name: "multipart", ctypes: []string{mw.FormDataContentType()}, body: mp.String(), want: 415, reason: reasonBodyContentType},
		{name: "form", ctypes: []string{form}, body: "to=x@evil.test", want: 415, reason: reasonBodyContentType},
		{name: "text", ctypes: []string{"text/plain"}, body: `{"to":"x@evil.test"}`, want: 415, reason: reasonBodyContentType},
		{name: "no Content-Type", body: `{"to":"x@evil.test"}`, want: 415, reason: reasonBodyContentType},
		{name: "no Content-Type, chunked", body: `{"to":"x@evil.test"}`, chunked: true, want: 415, reason: reasonBodyContentType},
		{name: "UTF-8 charset, quoted, upper case", ctypes: []string{`application/json; charset="UTF-8"`}, body: good, want: 200, forwardCT: "application/json"},
		{name: "upper-case media type", ctypes: []string{"Application/JSON"}, body: good, want: 200, forwardCT: "application/json"},
		{name: "+json type", ctypes: []string{"application/merge-patch+json"}, body: good, want: 200, forwardCT: "application/merge-patch+json"},
		{name: "byte order mark", ctypes: []string{"application/json"}, body: "\xef\xbb\xbf" + good, want: 400, reason: reasonBodyInvalid},
		{name: "UTF-16 body", ctypes: []string{"application/json"}, body: "{\x00\"\x00}\x00", want: 400, reason: reasonBodyInvalid},
		{name: "NUL escape in a key", ctypes: []string{"application/json"}, body: `{"to\u0000x":"x@evil.test","to":"a@example.com"}`, want: 400, reason: reasonBodyInvalid},
		{name: "lone surrogate in a key", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","t\ud800o":"x@evil.test"}`, want: 400, reason: reasonBodyInvalid},
		{name: "low surrogate alone", ctypes: []string{"application/json"}, body: `{"x":"\udc00"}`, want: 400, reason: reasonBodyInvalid},
		{name: "surrogate pair", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","x":"\ud83d\ude00 \\u0000"}`, want: 200, forwardCT: "application/json"},
		{name: "two Content-Encodings", ctypes: []string{"application/json"}, encodings: []string{"identity", "gzip"}, body: good, want: 415, reason: reasonBodyEncoding},
		{name: "identity encoding", ctypes: []string{"application/json"}, encodings: []string{"identity"}, body: good, want: 200, forwardCT: "application/json"},
		{name: "query: upper case", path: "/send/x?TO=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: percent-encoded", path: "/send/x?%74o=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: double-encoded", path: "/send/x?%2574o=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: brackets", path: "/send/x?to[]=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: encoded brackets", path: "/send/x?to%5B0%5D=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: dots", path: "/send/x?to.0=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: after a semicolon", path: "/send/x?a=1;to=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: padded", path: "/send/x?+to=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: NUL", path: "/send/x?to%00x=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "query: other names pass", path: "/send/x?total=1&tone=2&t_o=3", ctypes: []string{"application/json"}, body: good, want: 200, forwardCT: "application/json"},
		{name: "path parameter", path: "/send/x;to=x@evil.test", ctypes: []string{"application/json"}, body: good, want: 403, reason: reasonBodyRule},
		{name: "chunked", ctypes: []string{"application/json"}, body: `{"to":"x@evil.test"}`, chunked: true, want: 403, reason: reasonBodyRule},
		{name: "chunked, allowed", ctypes: []string{"application/json"}, body: good, chunked: true, want: 200, forwardCT: "application/json"},
		{name: "GET with a body", method: "GET", ctypes: []string{"application/json"}, body: `{"to":"x@evil.test"}`, want: 403, reason: reasonBodyRule},
		{name: "GET with an allowed body", method: "GET", ctypes: []string{"application/json"}, body: good, want: 200, forwardCT: "application/json"},
		{name: "empty body without a type", method: "GET", want: 200},
		{name: "subdomain in the grant", ctypes: []string{"application/json"}, body: `{"to":"Ann <a@b.corp.example>"}`, want: 200, forwardCT: "application/json"},
		{name: "address split on a no-break space", ctypes: []string{"application/json"}, body: `{"to":"x@evil.test\u00a0.corp.example"}`, want: 403, reason: reasonBodyRule},
		{name: "address split on a full-width comma", ctypes: []string{"application/json"}, body: `{"to":"x@evil.test\uff0c.corp.example"}`, want: 403, reason: reasonBodyRule},
		{name: "domain of 200 KB", ctypes: []string{"application/json"}, body: `{"to":"x@evil.test.` + strings.Repeat("a", 200<<10) + `.corp.example"}`, want: 403, reason: reasonBodyRule},
		{name: "full-width member name", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","ｔｏ":"x@evil.test"}`, want: 400, reason: reasonBodyInvalid},
		{name: "zero-width space in a member name", ctypes: []string{"application/json"}, body: `{"to\u200b":"x@evil.test"}`, want: 400, reason: reasonBodyInvalid},
		{name: "amount as a string", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","items":[{"amount":100},{"amount":"x"},null]}`, want: 403, reason: reasonBodyRule},
		{name: "amount in an object for an array", ctypes: []string{"application/json"}, body: `{"items":{"amount":1000}}`, want: 403, reason: reasonBodyRule},
		{name: "amount in index members", ctypes: []string{"application/json"}, body: `{"items":{"0":{"amount":1000}}}`, want: 403, reason: reasonBodyRule},
		{name: "amount in a nested array", ctypes: []string{"application/json"}, body: `{"items":[{"amount":1},[{"amount":1000}]]}`, want: 403, reason: reasonBodyRule},
		{name: "amounts allowed", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","items":[{"amount":100},{"n":1},null]}`, want: 200, forwardCT: "application/json"},
		{name: "member with brackets", ctypes: []string{"application/json"}, body: `{"to[]":"x@evil.test"}`, want: 403, reason: reasonBodyRule},
		{name: "member padded", ctypes: []string{"application/json"}, body: `{" to":"x@evil.test"}`, want: 403, reason: reasonBodyRule},
		{name: "member percent-encoded", ctypes: []string{"application/json"}, body: `{"%74o":"x@evil.test"}`, want: 403, reason: reasonBodyRule},
		{name: "other members pass", ctypes: []string{"application/json"}, body: `{"to":"a@example.com","total":1,"t_o":2,"tone":3}`, want: 200, forwardCT: "application/json"},
		{name: "__proto__", ctypes: []string{"application/json"}, body: `{"__proto__":{"to":"x@evil.test"}}`, want: 400, reason: reasonBodyInvalid},
		{name: "constructor.prototype", ctypes: []string{"application/json"}, body: `{"constructor":{"prototype":{"to":"x@evil.test"}}}`, want: 400, reason: reasonBodyInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.method == "" {
				tt.method = "POST"
			}
			if tt.path == "" {
				tt.path = "/send/x"
			}
			before := f.count()
			var body io.Reader = strings.NewReader(tt.body)
			if tt.chunked {
				body = io.MultiReader(body) // no length: sent chunked
			}
			req := e.request(tt.method, "/proxy/mail"+tt.path, mailToken(e), body)
			if tt.body == "" {
				req.Body, req.ContentLength = http.NoBody, 0
			}
			req.Header["Content-Type"] = tt.ctypes
			req.Header["Content-Encoding"] = tt.encodings
			resp, got := e.do(req)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, got)
			}
			if tt.want != 200 {
				if f.count() != before {
					t.Fatal("a refused request reached the upstream")
				}
				var answer struct {
					Error            string `json:"error"`
					ErrorDescription string `json:"error_description"`
				}
				json.Unmarshal([]byte(got), &answer)
				if ev := e.audit.last(t); ev.Reason != tt.reason || answer.Error == "" || answer.ErrorDescription == "" {
					t.Errorf("audit reason %q, answer %s; want reason %q and an error with a description", ev.Reason, got, tt.reason)
				}
				return
			}
			f.mu.Lock()
			seen, to, over := f.seen[len(f.seen)-1], f.to[len(f.to)-1], f.over[len(f.over)-1]
			f.mu.Unlock()
			if v, bad := outsideGrant(to); bad {
				t.Fatalf("the upstream read to = %q", v)
			}
			if len(over) > 0 {
				t.Fatalf("the upstream read the amounts %q", over)
			}
			if ct := seen.Values("Content-Type"); tt.forwardCT != "" && (len(ct) != 1 || ct[0] != tt.forwardCT) {
				t.Errorf("upstream Content-Type %q, want just %q", ct, tt.forwardCT)
			}
			if ce := seen.Values("Content-Encoding"); len(ce) > 0 {
				t.Errorf("upstream Content-Encoding %q", ce)
			}
		})
	}
}

// FuzzBodyRuleRequest: for any Content-Type headers, query, path parameter and body, a request
// the proxy forwards on a route with body rules gives the upstream no reading of "to" outside
// the grant, and exactly one Content-Type.
func FuzzBodyRuleRequest(f *testing.F) {
	f.Add("application/json", "", "", "", []byte(`{"to":"a@example.com"}`))
	f.Add("application/json", "application/x-www-form-urlencoded", "", "", []byte(`{"x":"&to=x@evil.test&y="}`))
	f.Add("application/json; charset=utf-7", "", "", "", []byte(`{"x":"`+utf7(`","to":"`)+`x@evil.test"}`))
	f.Add("application/json", "", "TO=x@evil.test", "", []byte(`{}`))
	f.Add("application/json", "", "to[]=x@evil.test", ";to=x", []byte(`{}`))
	f.Add("application/json", "", "", "", []byte(`{"to":"a@example.com","t\ud800o":"x@evil.test"}`))
	e, fw := mailEnv(f)
	f.Fuzz(func(t *testing.T, ct1, ct2, query, pathParam string, body []byte) {
		e.t = t
		u, err := url.Parse(e.issuer + "/proxy/mail/send/x" + pathParam + "?" + query)
		if err != nil || u.RawQuery != query || u.Path != "/proxy/mail/send/x"+pathParam {
			return // not sendable as written
		}
		req, err := http.NewRequest("POST", u.String(), bytes.NewReader(body))
		if err != nil {
			return
		}
		e.sign(req, mailToken(e))
		for _, ct := range []string{ct1, ct2} {
			if ct != "" {
				req.Header.Add("Content-Type", ct)
			}
		}
		before := fw.count()
		resp, err := e.client.Do(req)
		if err != nil {
			return // the client refused the header or URL
		}
		resp.Body.Close()
		if fw.count() == before {
			return
		}
		fw.mu.Lock()
		seen, to, over := fw.seen[len(fw.seen)-1], fw.to[len(fw.to)-1], fw.over[len(fw.over)-1]
		fw.mu.Unlock()
		if v, bad := outsideGrant(to); bad {
			t.Fatalf("the upstream read to = %q from Content-Type %q %q, query %q, path %q, body %q", v, ct1, ct2, query, pathParam, body)
		}
		if len(over) > 0 {
			t.Fatalf("the upstream read the amounts %q from body %q", over, body)
		}
		if ct := seen.Values("Content-Type"); len(ct) > 1 {
			t.Fatalf("the upstream received Content-Type %q", ct)
		}
	})
}
