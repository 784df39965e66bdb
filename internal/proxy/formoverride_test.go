package proxy

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/vault"
)

// rack is an upstream on 127.0.0.1 that honours a method override in a POST form the ways
// frameworks do: Rack::MethodOverride and Go's ParseForm/ParseMultipartForm read "_method"; PHP
// (Laravel, Symfony) reads names with leading spaces dropped, "." and " " as "_", cut at a NUL;
// Rack names a multipart part without a name by its filename or Content-ID; a POST without a
// Content-Type is a form to Rack. It records, for every request whose body arrived whole, the
// method it would run.
type rack struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []rackCall
}

type rackCall struct {
	method, effective string
	body              []byte
}

func newRack(t testing.TB) *rack {
	k := &rack{}
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // an incomplete body: Rack never calls the application
		}
		eff := effectiveMethod(r, body)
		k.mu.Lock()
		k.calls = append(k.calls, rackCall{r.Method, eff, body})
		k.mu.Unlock()
		_, _ = io.WriteString(w, eff)
	}))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *rack) all() []rackCall {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]rackCall(nil), k.calls...)
}

var testOverrideNames = []string{"_method", "__method", "_httpmethod", "x-http-method-override", "x-http-method",
	"x-method-override", "x_http_method_override", "x_http_method", "x_method_override"}

// phpName is a form name as PHP registers it (case aside).
func phpName(raw string) string {
	n, err := url.QueryUnescape(raw)
	if err != nil {
		n = raw
	}
	n, _, _ = strings.Cut(n, "\x00")
	n = strings.TrimLeft(n, " ")
	return strings.NewReplacer(".", "_", " ", "_").Replace(n)
}

func overrideIn(names ...string) bool {
	for _, n := range names {
		for _, o := range testOverrideNames {
			if strings.EqualFold(n, o) {
				return true
			}
		}
	}
	return false
}

// effectiveMethod is the method the upstream runs: another one when any framework's reading
// of a POST form finds an override field.
func effectiveMethod(r *http.Request, body []byte) string {
	if r.Method != http.MethodPost {
		return r.Method
	}
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = leadingMediaType(ct)
	}
	override := false
	switch {
	case mt == "" || mt == "application/x-www-form-urlencoded":
		r2 := r.Clone(r.Context())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		_ = r2.ParseForm()
		override = r2.PostForm.Has("_method")
		for part := range strings.SplitSeq(string(body), "&") {
			for p := range strings.SplitSeq(part, ";") {
				name, _, _ := strings.Cut(p, "=")
				override = override || overrideIn(phpName(name))
			}
		}
	case strings.HasPrefix(mt, "multipart/"):
		r2 := r.Clone(r.Context())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.Header.Set("Content-Type", "multipart/form-data; boundary="+params["boundary"])
		if r2.ParseMultipartForm(1<<20) == nil {
			_, override = r2.MultipartForm.Value["_method"]
		}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for p, err := mr.NextPart(); err == nil; p, err = mr.NextPart() {
			name := p.FormName()
			if name == "" {
				name = p.FileName()
			}
			if name == "" {
				name = strings.Trim(p.Header.Get("Content-Id"), "<> ")
			}
			override = override || overrideIn(name, phpName(name))
		}
	}
	override = override || jsonOverride(r.Header.Values("Content-Type"), body)
	if override {
		return "DELETE" // the value does not matter: the route check never saw it
	}
	return r.Method
}

// railsEnv is a proxy whose upstream "rails" is a rack, and a token that may POST /items and
// GET /items only.
func railsEnv(t testing.TB) (*env, *rack, string) {
	e := newEnv(t)
	k := newRack(t)
	e.upstreams.put(vault.Upstream{Name: "rails", BaseURL: k.srv.URL, Auth: vault.AuthBearer, AllowPrivate: true, Routes: []vault.Route{
		{Scope: "rails:write", Methods: []string{"POST", "GET"}, Paths: []string{"/items"}},
	}})
	return e, k, e.token(tokenOpts{scope: "rails:write", upstream: "rails"})
}

func multipartBody(boundary string, parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString("--" + boundary + "\r\n" + p + "\r\n")
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

// TestFormMethodOverrideRefused: a token allowed POST /items never makes an upstream that honours
// _method run another method, however the field is spelled or the body sent; the refusal is a
// 400 the agent can act on, recorded as method_override; forms without an override arrive byte
// for byte. Old main forwarded every one of the refused cases and the upstream ran DELETE.
func TestFormMethodOverrideRefused(t *testing.T) {
	e, k, tok := railsEnv(t)
	const form = "application/x-www-form-urlencoded"
	const mp = "multipart/form-data; boundary=XyZ"
	big := "a=" + strings.Repeat("x", 3<<20) + "&_method=DELETE"
	type tc = overrideCase
	refused := func(ct, body string) tc {
		return tc{ct: []string{ct}, body: body, status: 400, reason: reasonMethodOverride}
	}
	cases := map[string]tc{
		"plain":                 refused(form, "_method=DELETE"),
		"after a field":         refused(form, "title=x&_method=DELETE"),
		"percent-encoded":       refused(form, "%5Fmethod=DELETE"),
		"all percent-encoded":   refused(form, "%5f%6d%65%74%68%6f%64=DELETE"),
		"upper case":            refused(form, "_METHOD=DELETE"),
		"no value":              refused(form, "a=1&_method"),
		"semicolon":             refused(form, "a=1;_method=DELETE"),
		"php dot":               refused(form, ".method=DELETE"),
		"php leading spaces":    refused(form, "++%20_method=DELETE"),
		"php nul":               refused(form, "_method%00junk=DELETE"),
		"array":                 refused(form, "_method[]=DELETE"),
		"array, encoded":        refused(form, "_method%5B%5D=DELETE"),
		"nested key":            refused(form, "_method[x]=DELETE"),
		"trailing space":        refused(form, "_method%20=DELETE"),
		"trailing plus":         refused(form, "_method+=DELETE"),
		"trailing tab":          refused(form, "_method%09=DELETE"),
		"other override names":  refused(form, "X-HTTP-Method-Override=DELETE"),
		"late in a big body":    refused(form, big),
		"charset":               refused("application/x-www-form-urlencoded; charset=UTF-8", "_method=DELETE"),
		"latin-1, odd case":     refused("Application/X-WWW-Form-URLencoded;Charset=ISO-8859-1", "_method=DELETE"),
		"no content type":       {body: "_method=DELETE", status: 400, reason: reasonMethodOverride},
		"empty content type":    refused("", "_method=DELETE"),
		"chunked":               {ct: []string{form}, body: "a=1&_method=DELETE", chunked: true, status: 400, reason: reasonMethodOverride},
		"chunked big":           {ct: []string{form}, body: big, chunked: true, status: 400, reason: reasonMethodOverride},
		"GET with a form body":  {method: "GET", ct: []string{form}, body: "_method=DELETE", status: 400, reason: reasonMethodOverride},
		"multipart quoted":      refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE")),
		"multipart unquoted":    refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; name=_method\r\n\r\nDELETE")),
		"multipart case":        refused(mp, multipartBody("XyZ", "content-disposition: FORM-DATA; NAME=\"_Method\"\r\n\r\nDELETE")),
		"multipart rfc 2231":    refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n\r\nDELETE")),
		"multipart continued":   refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; name*0=\"_me\"; name*1=\"thod\"\r\n\r\nDELETE")),
		"multipart filename":    refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; filename=\"_method\"\r\n\r\nDELETE")),
		"multipart content-id":  refused(mp, multipartBody("XyZ", "Content-Disposition: form-data\r\nContent-ID: <_method>\r\n\r\nDELETE")),
		"multipart late":        refused(mp, multipartBody("XyZ", "Content-Disposition: form-data; name=\"f\"\r\n\r\n"+strings.Repeat("y", 1<<20), "Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE")),
		"multipart related":     refused("multipart/related; boundary=XyZ", multipartBody("XyZ", "Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE")),
		"multipart chunked":     {ct: []string{mp}, body: multipartBody("XyZ", "Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE"), chunked: true, status: 400, reason: reasonMethodOverride},
		"multipart huge header": {ct: []string{mp}, body: multipartBody("XyZ", "X-Pad: "+strings.Repeat("p", 20<<10)+"\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE"), status: 400, reason: reasonBodyInvalid},

		"two content types":       {ct: []string{"application/json", form}, body: "_method=DELETE", status: 415, reason: reasonBodyContentType},
		"a list":                  {ct: []string{form + ", application/json"}, body: "_method=DELETE", status: 415, reason: reasonBodyContentType},
		"utf-16":                  {ct: []string{form + "; charset=utf-16"}, body: "a=1", status: 415, reason: reasonBodyContentType},
		"gzip":                    {ct: []string{form}, ce: "gzip", body: "a=1", status: 415, reason: reasonBodyEncoding},
		"multipart, 2 boundaries": {ct: []string{"multipart/form-data; boundary=a; x=\"boundary=b\""}, body: "--a--", status: 0},
		"multipart, odd boundary": {ct: []string{"multipart/form-data; boundary=\"a,b\""}, body: "--a,b--", status: 415, reason: reasonBodyContentType},

		"ordinary form":        {ct: []string{form}, body: "title=_method&method=x&my_method=1&_methodx=2&%5Fmethods=3&a=%zz&&="},
		"ordinary multipart":   {ct: []string{mp}, body: multipartBody("XyZ", "Content-Disposition: form-data; name=\"file\"; filename=\"form.html\"\r\n\r\n<input name=\"_method\" value=\"DELETE\">\r\n--Xy")},
		"json":                 {ct: []string{"application/json"}, body: `{"_method":"DELETE"}`, status: 400, reason: reasonMethodOverride},
		"json, chunked":        {ct: []string{"application/json"}, body: `{"a":"_method=DELETE"}`, chunked: true},
		"form with a long key": {ct: []string{form}, body: strings.Repeat("_", 100) + "method=1&" + strings.Repeat("+", 5000) + "a=2"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) { c.check(t, e, k, tok) })
	}
}

// overrideCase is a request to a rack that may carry a method override.
type overrideCase struct {
	method  string
	ct      []string // Content-Type fields
	ce      string
	body    string
	chunked bool
	status  int // 0: forwarded as sent
	reason  string
}

// check sends the request with tok: a refusal is answered and audited as c says and the rack
// receives no whole body; otherwise the body arrives byte for byte and the rack runs c.method.
func (c overrideCase) check(t *testing.T, e *env, k *rack, tok string) {
	t.Helper()
	if c.method == "" {
		c.method = "POST"
	}
	var body io.Reader = strings.NewReader(c.body)
	if c.chunked {
		body = iotest.HalfReader(io.MultiReader(strings.NewReader(c.body[:len(c.body)/2]), strings.NewReader(c.body[len(c.body)/2:])))
	}
	req := e.request(c.method, "/proxy/rails/items", tok, body)
	if c.chunked {
		req.ContentLength = -1
	}
	for _, ct := range c.ct {
		req.Header.Add("Content-Type", ct)
	}
	if c.ce != "" {
		req.Header.Set("Content-Encoding", c.ce)
	}
	before := len(k.all())
	resp, answer := e.do(req)
	calls := k.all()[before:]
	if c.status != 0 {
		if resp.StatusCode != c.status {
			t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, answer)
		}
		if len(calls) != 0 {
			t.Fatalf("the upstream received a whole body and ran %s", calls[0].effective)
		}
		if ev := e.audit.last(t); ev.Reason != c.reason || ev.Outcome != audit.OutcomeDenied {
			t.Errorf("audit %s %s, want denied %s", ev.Outcome, ev.Reason, c.reason)
		}
		if c.reason == reasonMethodOverride && !(strings.Contains(answer, `"invalid_request"`) && strings.Contains(answer, "call the upstream with the method you mean")) {
			t.Errorf("answer %s", answer)
		}
		return
	}
	if resp.StatusCode != http.StatusOK || len(calls) != 1 {
		t.Fatalf("status %d, %d calls: %s", resp.StatusCode, len(calls), answer)
	}
	if calls[0].effective != c.method {
		t.Fatalf("the upstream ran %s", calls[0].effective)
	}
	if string(calls[0].body) != c.body {
		t.Fatalf("the upstream received %q, want %q", calls[0].body, c.body)
	}
}

// TestFormReaderSplitReads: the scanner finds the same thing whatever the reads' sizes, and
// passes a body it lets through byte for byte.
func TestFormReaderSplitReads(t *testing.T) {
	bodies := []struct {
		kind     int
		body     string
		override bool
	}{
		{formURLEncoded, "a=1&_method=DELETE", true},
		{formURLEncoded, "a=1&%5F%6Dethod=DELETE&b", true},
		{formURLEncoded, "a=1&%5F%6Dethod%=DELETE&b", false},
		{formURLEncoded, "+++%2_method=1&%%5Fmethod=2&x-http-method-overridex=3", false},
		{formURLEncoded, "a=1&++%20x-HTTP-Method-Override", true},
		{formMultipart, multipartBody("b", "Content-Disposition: form-data; name=a\r\n\r\n1", "Content-Disposition: form-data; name=\"_method\"\r\n\r\nx"), true},
		{formMultipart, multipartBody("b", "Content-Disposition: form-data; name=a\r\n\r\n-b-b--b", "Content-Disposition: form-data; name=\"method\"\r\n\r\nx"), false},
		{formMultipart, "preamble--b\r\nContent-Disposition: form-data; name=_method", true},
	}
	for _, b := range bodies {
		for size := 1; size <= 9; size++ {
			fr := newFormReader(io.NopCloser(iotest.OneByteReader(&sizedReader{r: strings.NewReader(b.body), n: size})), b.kind, "b", "POST")
			if size > 1 {
				fr = newFormReader(io.NopCloser(&sizedReader{r: strings.NewReader(b.body), n: size}), b.kind, "b", "POST")
			}
			out, err := io.ReadAll(fr)
			if got := fr.refused.Load() != nil; got != b.override {
				t.Errorf("%q in reads of %d: refused %v (%v)", b.body, size, got, err)
				continue
			}
			if !b.override && (err != nil || string(out) != b.body) {
				t.Errorf("%q in reads of %d: got %q, %v", b.body, size, out, err)
			}
			if b.override && strings.Contains(strings.ToLower(string(out)), "method") && strings.Count(string(out), "method") == strings.Count(b.body, "method") {
				t.Errorf("%q in reads of %d: the override name went out: %q", b.body, size, out)
			}
		}
	}
}

// sizedReader returns at most n bytes per read.
type sizedReader struct {
	r io.Reader
	n int
}

func (s *sizedReader) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

func TestIsOverrideName(t *testing.T) {
	for in, want := range map[string]bool{
		"_method": true, "_METHOD": true, "%5Fmethod": true, "%5f%6D%65thod": true, ".method": true, "+_method": true,
		"%20%20_method": true, "_method%00x": true, "_method\x00": true, "x.http.method": true, "__method": true,
		"X-HTTP-Method-Override": true, "_HttpMethod": true,
		"": false, "method": false, "_methods": false, "_method%": false, "_method%0": false, "%_method": false,
		"a_method": false, "_method_": false, "%255Fmethod": false, "_meth%6Fd%": false,
	} {
		if got := isOverrideName(in); got != want {
			t.Errorf("isOverrideName(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzFormOverride: for any Content-Type, body and way of sending it, a POST the token may make
// never makes an upstream that honours method overrides (see rack) run another method, and a
// body that arrives whole arrives as it was sent.
func FuzzFormOverride(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", []byte("a=1&_method=DELETE"), false)
	f.Add("", []byte("%5Fmethod=DELETE"), true)
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name*=utf-8''_method\r\n\r\nDELETE\r\n--b--"), false)
	f.Add("multipart/mixed; boundary=\"b\"", []byte("--b\r\nContent-ID: _method\r\n\r\nDELETE\r\n--b--"), true)
	f.Add("text/plain", []byte("_method=DELETE"), false)
	e, k, tok := railsEnv(f)
	f.Fuzz(func(t *testing.T, ct string, body []byte, chunked bool) {
		e.t = t
		var r io.Reader = bytes.NewReader(body)
		if chunked {
			r = iotest.HalfReader(r)
		}
		req := e.request("POST", "/proxy/rails/items", tok, r)
		if chunked {
			req.ContentLength = -1
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		before := len(k.all())
		resp, err := e.client.Do(req)
		if err != nil {
			return // the client refused the header
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		for _, c := range k.all()[before:] {
			if c.effective != "POST" {
				t.Fatalf("the upstream ran %s for Content-Type %q, body %q", c.effective, ct, body)
			}
			if !bytes.Equal(c.body, body) {
				t.Fatalf("the upstream received %q, sent %q", c.body, body)
			}
		}
	})
}

// TestPartOverrides: every reading of a part's header block that some parser uses.
func TestPartOverrides(t *testing.T) {
	for in, want := range map[string]bool{
		"\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n":                 true,
		"\r\nContent-Disposition: form-data; name=_method\r\n\r\n":                     true,
		"\r\nContent-Disposition: form-data; name = \"_me\\thod\"\r\n\r\n":             true,
		"\r\nContent-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n\r\n":           true,
		"\r\nContent-Disposition: form-data; name*=\"UTF-8'en'_method\"\r\n\r\n":       true,
		"\r\nContent-Disposition: form-data; name*0=_me; name*1=thod\r\n\r\n":          true,
		"\r\nContent-Disposition: form-data; filename=\"x;name=_method\"\r\n\r\n":      true,
		"\r\nContent-Disposition: form-data;\r\n name=\"_method\"\r\n\r\n":             true,
		"\r\nContent-Disposition: form-data\r\nContent-Id: < _method>\r\n\r\n":         true,
		"\r\nContent-Type: text/plain; name=\"x-http-method\"\r\n\r\n":                 true,
		"\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\n":                  false,
		"\r\nContent-Disposition: form-data; name=\"f\"; filename=\"_method.txt\"\r\n": false,
		"\r\nContent-Disposition: form-data; name=\"a\"; x=\"_method\"\r\n\r\n":        false,
	} {
		if got := partOverrides([]byte(in)); got != want {
			t.Errorf("partOverrides(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzFormReader: for any form body and any read sizes, the scanner decides as it does on one
// whole read, passes a body it does not refuse byte for byte, and what it passes no framework
// reading (effectiveMethod) takes for an override.
func FuzzFormReader(f *testing.F) {
	f.Add(false, []byte("a=1&_method=DELETE"), uint8(1))
	f.Add(false, []byte("%5f%6Dethod%=x&+.method"), uint8(3))
	f.Add(true, []byte("--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nx\r\n--b--"), uint8(2))
	f.Add(true, []byte("x--b\r\nContent-ID: <_method>\r\n\r\n"), uint8(5))
	f.Fuzz(func(t *testing.T, multi bool, body []byte, size uint8) {
		kind, ct := formURLEncoded, "application/x-www-form-urlencoded"
		if multi {
			kind, ct = formMultipart, "multipart/form-data; boundary=b"
		}
		if scanAlike(t, kind, "b", body, int(size)%16+1) {
			return
		}
		r, _ := http.NewRequest("POST", "http://upstream.test/items", nil)
		r.Header.Set("Content-Type", ct)
		if m := effectiveMethod(r, body); m != "POST" {
			t.Fatalf("%q passed, and a framework runs %s", body, m)
		}
	})
}

// scanAlike reads body through a formReader in one read and in reads of size: both must
// decide alike, and a body not refused must pass byte for byte. It reports whether the body
// was refused.
func scanAlike(t *testing.T, kind int, boundary string, body []byte, size int) bool {
	t.Helper()
	read := func(n int) ([]byte, bool) {
		fr := newFormReader(io.NopCloser(&sizedReader{r: bytes.NewReader(body), n: n}), kind, boundary, "POST")
		out, _ := io.ReadAll(fr)
		return out, fr.refused.Load() != nil
	}
	whole, refused := read(len(body) + 1)
	out, refused2 := read(size)
	if refused != refused2 {
		t.Fatalf("%q: refused %v in one read, %v in reads of %d", body, refused, refused2, size)
	}
	if !refused && (!bytes.Equal(whole, body) || !bytes.Equal(out, body)) {
		t.Fatalf("%q passed as %q / %q", body, whole, out)
	}
	return refused
}

// BenchmarkFormReader is the scan of a form body alone (a body without Content-Type is one:
// TestStreaming1GiB's upload), in MB/s.
func BenchmarkFormReader(b *testing.B) {
	const size = 16 << 20
	b.SetBytes(size)
	buf := make([]byte, 32<<10)
	for b.Loop() {
		fr := newFormReader(io.NopCloser(&patternReader{left: size}), formURLEncoded, "", "POST")
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{fr}, buf); err != nil {
			b.Fatal(err)
		}
	}
}
