package proxy

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/vault"
)

// A credential with bytes that every encoding treats differently: URL and JSON escapes, HTML
// characters, a non-ASCII rune, base64's "+" and "/".
const echoSecret = `sk_live/Ab+c=d&e<f>"é~9?x`

// upstreamCoding is a content coding a test upstream applies: its Content-Encoding and how it
// encodes. br, zstd and compress stand for codings the proxy does not decode; their bytes are
// the plaintext reversed (unreadable to a masker, readable to the agent).
type upstreamCoding struct {
	name, header string
	encode       func([]byte) []byte
}

var upstreamCodings = []upstreamCoding{
	{"identity", "", func(b []byte) []byte { return b }},
	{"gzip", "gzip", gzipped},
	{"x-gzip", "x-gzip", gzipped},
	{"deflate zlib", "deflate", func(b []byte) []byte {
		var out bytes.Buffer
		w := zlib.NewWriter(&out)
		w.Write(b)
		w.Close()
		return out.Bytes()
	}},
	{"deflate raw", "Deflate", func(b []byte) []byte {
		var out bytes.Buffer
		w, _ := flate.NewWriter(&out, flate.BestSpeed)
		w.Write(b)
		w.Close()
		return out.Bytes()
	}},
	{"gzip twice", "gzip, GZIP", func(b []byte) []byte { return gzipped(gzipped(b)) }},
	{"identity listed", "identity", func(b []byte) []byte { return b }},
	{"br", "br", reversed},
	{"zstd", "zstd", reversed},
	{"gzip then unknown", "gzip, compress", func(b []byte) []byte { return reversed(gzipped(b)) }},
}

func gzipped(b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func reversed(b []byte) []byte {
	out := slices.Clone(b)
	slices.Reverse(out)
	return out
}

// decodeAs undoes a test coding, for what the agent would read.
func decodeAs(header string, b []byte) []byte {
	codings := strings.Split(header, ",")
	for i := len(codings) - 1; i >= 0; i-- {
		var r io.Reader
		switch strings.ToLower(strings.TrimSpace(codings[i])) {
		case "gzip", "x-gzip":
			if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
				r = zr
			}
		case "deflate":
			if zr, err := zlib.NewReader(bytes.NewReader(b)); err == nil {
				r = zr
			} else {
				r = flate.NewReader(bytes.NewReader(b))
			}
		case "br", "zstd", "compress":
			b = reversed(b)
		}
		if r != nil {
			b, _ = io.ReadAll(r)
		}
	}
	return b
}

// Upstream behaviours.
const (
	upstreamHonest  = iota // encodes only when asked, serves ranges when asked
	upstreamAlways         // encodes whatever the request says (a precompressed file), serves ranges of it
	upstreamPartial        // answers 206 with the first part, asked or not
	upstreamBehaviours
)

// serveEcho answers with body (which holds the credential) in coding, and echoes the credential
// in a 103 Early Hints link, a header and (on a whole answer) a trailer.
func serveEcho(w http.ResponseWriter, r *http.Request, body []byte, coding upstreamCoding, behaviour int) {
	secret := r.Header.Get("X-Api-Key")
	w.Header().Set("Link", "</next?key="+url.QueryEscape(secret)+">; rel=preload")
	w.WriteHeader(http.StatusEarlyHints)
	w.Header().Del("Link")
	w.Header().Set("X-Echo", base64.StdEncoding.EncodeToString([]byte("user:"+secret)))
	w.Header().Set("Content-Type", "application/json")
	enc := body
	if coding.header != "" && (behaviour != upstreamHonest || strings.Contains(r.Header.Get("Accept-Encoding"), strings.ToLower(strings.Split(coding.header, ",")[0]))) {
		enc = coding.encode(body)
		w.Header().Set("Content-Encoding", coding.header)
	}
	switch {
	case behaviour == upstreamPartial:
		half := len(enc) / 2
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", half-1, len(enc)))
		w.Header().Set("Content-Length", strconv.Itoa(half))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(enc[:half])
	case r.Header.Get("Range") != "":
		w.Header().Set("Etag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(enc))
	default:
		w.Header().Set("Trailer", "X-Echo-Trailer")
		w.Write(enc)
		w.Header().Set("X-Echo-Trailer", hex.EncodeToString([]byte(secret)))
	}
}

// echoBody is an answer holding secret in several forms, the raw one across byte 10.
func echoBody(secret string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"k":"` + secret + `","b64":[`)
	for k := range 3 {
		fmt.Fprintf(&b, "%q,", base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", k)+secret+"!")))
	}
	fmt.Fprintf(&b, `"%s"],"hex":"%X","url":"/a?k=%s","json":%q}`, base64.RawURLEncoding.EncodeToString([]byte("{\"key\":\""+secret+"\"}")),
		secret, url.QueryEscape(secret), secret)
	return b.Bytes()
}

// echoEnv is a proxy whose upstream "echo" injects echoSecret as X-Api-Key.
func echoEnv(t testing.TB) *env {
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.Audit = &discardAudit{} }})
	s := echoSecret
	e.creds.secret.Store(&s)
	e.upstreams.put(vault.Upstream{Name: "echo", BaseURL: e.up.URL, Auth: vault.AuthHeader, Param: "X-Api-Key", AllowPrivate: true,
		Routes: []vault.Route{{Scope: "echo:read", Methods: []string{"GET", "HEAD"}, Paths: []string{"/**"}}}})
	return e
}

// fetched is what the agent received for one request.
type fetched struct {
	status   int
	header   http.Header
	early    []textproto.MIMEHeader
	body     []byte
	trailer  http.Header
	encoding string
}

func (e *env) fetch(t testing.TB, tok string, headers map[string]string) fetched {
	t.Helper()
	req := e.request("GET", "/proxy/echo/doc", tok, nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	var f fetched
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(_ int, h textproto.MIMEHeader) error { f.early = append(f.early, h); return nil },
	}))
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	f.body, err = io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	f.status, f.header, f.trailer, f.encoding = resp.StatusCode, resp.Header, resp.Trailer, resp.Header.Get("Content-Encoding")
	return f
}

// leaks lists how secret reached the agent in what it received: any form of it in a header,
// an early hint, a trailer, or the body as the agent decodes it; an encoded or partial answer
// (which the proxy cannot have checked) counts as a leak by itself.
func leaks(secret string, got ...fetched) []string {
	var out []string
	var body []byte
	for _, f := range got {
		if f.encoding != "" && !strings.EqualFold(f.encoding, "identity") {
			out = append(out, "an answer in Content-Encoding "+f.encoding+" was forwarded")
		}
		if f.status == http.StatusPartialContent {
			out = append(out, "a partial answer was forwarded")
		}
		hs := []http.Header{f.header, f.trailer}
		for _, h := range f.early {
			hs = append(hs, http.Header(h))
		}
		for _, h := range hs {
			if form, ok := containsForm([]byte(fmt.Sprint(h)), secret); ok {
				out = append(out, fmt.Sprintf("%q in headers %v", form, h))
			}
		}
		body = append(body, decodeAs(f.encoding, f.body)...)
	}
	if form, ok := containsForm(body, secret); ok {
		out = append(out, fmt.Sprintf("%q in the body", form))
	}
	return out
}

// TestEchoedSecretRepresentations: an upstream echoes the credential in its answer (body in
// several encoded forms, a header, a trailer, an early hint), encodes the answer in each content
// coding, honestly or unasked, or answers with a part; the agent asks for compression or for
// ranges (two ranges that together cover the credential). Whatever the combination, the agent
// gets the whole answer decoded and masked, or a 502 — never the credential.
func TestEchoedSecretRepresentations(t *testing.T) {
	e := echoEnv(t)
	tok := e.token(tokenOpts{scope: "echo:read", upstream: "echo"})
	body := echoBody(echoSecret)
	want := newMasker([]string{echoSecret}).maskString(string(body))
	agents := map[string][]map[string]string{
		"plain":          {nil},
		"compression":    {{"Accept-Encoding": "gzip, deflate, br, zstd, compress"}},
		"two ranges":     {{"Range": "bytes=0-9"}, {"Range": "bytes=10-"}},
		"ranges, gzip":   {{"Range": "bytes=0-9", "Accept-Encoding": "gzip"}, {"Range": "bytes=10-", "Accept-Encoding": "gzip"}},
		"if-range":       {{"Range": "bytes=0-9", "If-Range": `"v1"`}, {"Range": "bytes=10-", "If-Range": `"v1"`}},
		"multipart":      {{"Range": "bytes=0-9,10-"}},
		"identity first": {{"Accept-Encoding": "identity;q=1, *;q=0.5"}},
	}
	for _, coding := range upstreamCodings {
		for behaviour, bname := range []string{"honest", "always", "partial"} {
			for aname, reqs := range agents {
				t.Run(coding.name+"/"+bname+"/"+aname, func(t *testing.T) {
					e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) { serveEcho(w, r, body, coding, behaviour) })
					var got []fetched
					for _, h := range reqs {
						got = append(got, e.fetch(t, tok, h))
					}
					if l := leaks(echoSecret, got...); len(l) > 0 {
						t.Fatalf("the credential reached the agent: %s", strings.Join(l, "; "))
					}
					wantStatus := http.StatusOK
					if behaviour == upstreamPartial || behaviour == upstreamAlways && slices.Contains([]string{"br", "zstd", "gzip then unknown"}, coding.name) {
						wantStatus = http.StatusBadGateway
					}
					for _, f := range got {
						if f.status != wantStatus {
							t.Fatalf("status %d, want %d: %s", f.status, wantStatus, f.body)
						}
						if wantStatus == http.StatusOK && string(f.body) != want {
							t.Fatalf("body\n%s\nwant\n%s", f.body, want)
						}
					}
				})
			}
		}
	}
}

// TestEchoedSecretAudit: a refused answer is a failure with its reason; a decoded answer drops
// the validators of the encoded bytes; a call that injects no credential keeps the agent's
// Accept-Encoding and Range and the upstream's answer untouched.
func TestEchoedSecretAudit(t *testing.T) {
	audited := &fakeAudit{}
	e := newEnv(t, envOpts{cfg: func(c *Config) { c.Audit = audited }})
	s := echoSecret
	e.creds.secret.Store(&s)
	e.upstreams.put(vault.Upstream{Name: "echo", BaseURL: e.up.URL, Auth: vault.AuthHeader, Param: "X-Api-Key", AllowPrivate: true,
		Routes: []vault.Route{{Scope: "echo:read", Methods: []string{"GET"}, Paths: []string{"/**"}}}})
	tok := e.token(tokenOpts{scope: "echo:read", upstream: "echo"})
	body := echoBody(echoSecret)
	// next waits for the event of the call just made (it is written after the answer).
	next := func(t *testing.T, seen int) audit.Event {
		t.Helper()
		if len(audited.all()) <= seen {
			t.Fatal("no audit event")
		}
		return audited.last(t)
	}
	for name, tc := range map[string]struct {
		coding    upstreamCoding
		behaviour int
		reason    string
	}{
		"br":      {upstreamCodings[7], upstreamAlways, reasonResponseEncoding},
		"partial": {upstreamCodings[0], upstreamPartial, reasonResponseRange},
	} {
		t.Run(name, func(t *testing.T) {
			e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) { serveEcho(w, r, body, tc.coding, tc.behaviour) })
			seen := len(audited.all())
			if f := e.fetch(t, tok, nil); f.status != http.StatusBadGateway || !strings.Contains(string(f.body), "bad_gateway") {
				t.Fatalf("status %d: %s", f.status, f.body)
			}
			if ev := next(t, seen); ev.Outcome != audit.OutcomeFailure || ev.Reason != tc.reason {
				t.Errorf("audit %s %q, want failure %q", ev.Outcome, ev.Reason, tc.reason)
			}
		})
	}
	t.Run("credential as the coding", func(t *testing.T) {
		// The refusal names no upstream value: this one is the credential itself.
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip, "+r.Header.Get("X-Api-Key"))
			w.Write(body)
		})
		seen := len(audited.all())
		f := e.fetch(t, tok, nil)
		if l := leaks(echoSecret, f); f.status != http.StatusBadGateway || len(l) > 0 || strings.Contains(string(f.body), echoSecret[:8]) {
			t.Fatalf("status %d: %s %v", f.status, f.body, l)
		}
		if ev := next(t, seen); strings.Contains(ev.Detail, echoSecret[:8]) {
			t.Errorf("the audit detail holds the credential: %q", ev.Detail)
		}
	})
	t.Run("decoded", func(t *testing.T) {
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Accept-Encoding") != "identity" || r.Header.Get("Range") != "" || r.Header.Get("If-Range") != "" {
				t.Errorf("upstream asked for Accept-Encoding %q, Range %q, If-Range %q", r.Header.Get("Accept-Encoding"), r.Header.Get("Range"), r.Header.Get("If-Range"))
			}
			enc := gzipped([]byte("plain " + r.Header.Get("X-Api-Key")))
			for k, v := range map[string]string{"Content-Encoding": "gzip", "Content-Length": strconv.Itoa(len(enc)), "Etag": `"abc"`,
				"Content-Md5": "x", "Digest": "sha-256=x", "Repr-Digest": "sha-256=:x:", "Accept-Ranges": "bytes"} {
				w.Header().Set(k, v)
			}
			w.Write(enc)
		})
		seen := len(audited.all())
		f := e.fetch(t, tok, map[string]string{"Accept-Encoding": "gzip", "Range": "bytes=0-3", "If-Range": `"abc"`})
		if f.status != 200 || string(f.body) != "plain "+strings.Repeat("*", len(echoSecret)) {
			t.Fatalf("status %d: %q", f.status, f.body)
		}
		for _, k := range []string{"Content-Encoding", "Content-Length", "Content-Md5", "Digest", "Repr-Digest", "Accept-Ranges"} {
			if v := f.header.Get(k); v != "" {
				t.Errorf("%s: %q passed on", k, v)
			}
		}
		if et := f.header.Get("Etag"); et != `W/"abc"` {
			t.Errorf("Etag %q, want the weak form", et)
		}
		if ev := next(t, seen); ev.Outcome != audit.OutcomeSuccess {
			t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
		}
	})
	t.Run("corrupt", func(t *testing.T) {
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(gzipped([]byte("plain answer"))[:15])
		})
		seen := len(audited.all())
		req := e.request("GET", "/proxy/echo/doc", tok, nil)
		// On a fresh connection: the proxy cuts this answer, and on a reused connection
		// net/http would send the GET again with the same (now replayed) DPoP proof.
		e.client.CloseIdleConnections()
		if resp, err := e.client.Do(req); err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("a truncated gzip answer arrived whole: %d %q", resp.StatusCode, b)
			}
		}
		if ev := next(t, seen); ev.Outcome != audit.OutcomeFailure || ev.Reason != reasonResponseEncoding {
			t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
		}
	})
	t.Run("bomb", func(t *testing.T) {
		// 64 MiB of zeros, gzipped twice: about 200 bytes on the wire.
		var zeros bytes.Buffer
		zw := gzip.NewWriter(&zeros)
		zw.Write(make([]byte, 64<<20))
		zw.Close()
		bomb := gzipped(zeros.Bytes())
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Encoding", "gzip, gzip")
			w.Write(bomb)
		})
		seen := len(audited.all())
		resp, err := e.client.Do(e.request("GET", "/proxy/echo/doc", tok, nil))
		if err == nil {
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil || n > maxExpansion*int64(len(bomb))+expansionSlack+64<<10 {
				t.Fatalf("the bomb expanded to %d bytes (%v)", n, err)
			}
		}
		if ev := next(t, seen); ev.Reason != reasonResponseEncoding {
			t.Errorf("audit %s %q", ev.Outcome, ev.Reason)
		}
	})
	t.Run("no credential", func(t *testing.T) {
		short := "k1"
		e.creds.secret.Store(&short) // shorter than minSecret: nothing to mask
		defer e.creds.secret.Store(&s)
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Accept-Encoding") != "gzip" || r.Header.Get("Range") != "bytes=0-3" {
				t.Errorf("upstream asked for Accept-Encoding %q, Range %q", r.Header.Get("Accept-Encoding"), r.Header.Get("Range"))
			}
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Range", "bytes 0-3/10")
			w.WriteHeader(http.StatusPartialContent)
			w.Write([]byte("abcd"))
		})
		f := e.fetch(t, tok, map[string]string{"Accept-Encoding": "gzip", "Range": "bytes=0-3"})
		if f.status != http.StatusPartialContent || f.encoding != "gzip" || string(f.body) != "abcd" {
			t.Fatalf("status %d, encoding %q: %q", f.status, f.encoding, f.body)
		}
	})
}

// FuzzEchoedSecret states the promise through the real proxy: for any upstream answer holding
// the credential (in a form chosen by the fuzzer, anywhere in arbitrary bytes), in any content
// coding the upstream applies, asked or not, whole or partial, and any Accept-Encoding and pair
// of ranges the agent asks for, the agent receives neither the credential nor an encoded form
// of it, and a whole answer is the upstream's with only the credential masked.
func FuzzEchoedSecret(f *testing.F) {
	e := echoEnv(f)
	tok := e.token(tokenOpts{scope: "echo:read", upstream: "echo"})
	m := newMasker([]string{echoSecret})
	forms := echoedForms(echoSecret)
	accept := []string{"", "gzip", "deflate", "br", "zstd", "gzip, deflate, br", "*", "identity;q=0"}
	f.Add([]byte(`{"a":1}`), uint16(3), uint8(1), uint8(0), uint8(1), uint16(10), uint8(0))
	f.Add([]byte("plain text answer"), uint16(0), uint8(5), uint8(1), uint8(5), uint16(3), uint8(7))
	f.Add([]byte{}, uint16(0), uint8(0), uint8(2), uint8(0), uint16(0), uint8(9))
	f.Fuzz(func(t *testing.T, text []byte, pos uint16, coding, behaviour, ae uint8, split uint16, form uint8) {
		e.t = t // iterations run one at a time in a process
		p := int(pos) % (len(text) + 1)
		body := slices.Concat(text[:p], []byte(forms[int(form)%len(forms)]), text[p:])
		c := upstreamCodings[int(coding)%len(upstreamCodings)]
		b := int(behaviour) % upstreamBehaviours
		e.setUpstreamHandler(func(w http.ResponseWriter, r *http.Request) { serveEcho(w, r, body, c, b) })
		k := int(split) % (len(body) + 1)
		a := accept[int(ae)%len(accept)]
		var got []fetched
		for _, rng := range []string{fmt.Sprintf("bytes=0-%d", k), fmt.Sprintf("bytes=%d-", k+1)} {
			got = append(got, e.fetch(t, tok, map[string]string{"Accept-Encoding": a, "Range": rng}))
		}
		if l := leaks(echoSecret, got...); len(l) > 0 {
			t.Fatalf("the credential reached the agent: %s", strings.Join(l, "; "))
		}
		for _, g := range got {
			if g.status == http.StatusOK && string(g.body) != m.maskString(string(body)) {
				t.Fatalf("body %q, want %q", g.body, m.maskString(string(body)))
			}
		}
	})
}
