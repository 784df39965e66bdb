package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/mandate-dev/mandate/internal/vault"
)

// echoedForms are the forms of secret the proxy promises never to let through, written apart
// from echoForms: as is, URL-escaped, hex, JSON-escaped (Go's encoder, with and without HTML
// escaping), and base64/base64url at each byte alignment — the longest run of characters that
// depends on the secret's bytes alone.
func echoedForms(secret string) []string {
	forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret), hex.EncodeToString([]byte(secret)), strings.ToUpper(hex.EncodeToString([]byte(secret)))}
	for _, html := range []bool{true, false} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		_ = enc.Encode(secret)
		forms = append(forms, strings.TrimSuffix(strings.TrimSpace(b.String()), `"`)[1:])
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for k := range 3 {
			s := enc.EncodeToString(append(make([]byte, k), secret...))
			// character i covers bits [6i, 6i+6); the secret's bits are [8k, 8(k+len)).
			from, to := (8*k+5)/6, 8*(k+len(secret))/6
			forms = append(forms, s[from:to])
		}
	}
	return forms
}

func containsForm(b []byte, secret string) (string, bool) {
	for _, f := range echoedForms(secret) {
		if bytes.Contains(b, []byte(f)) {
			return f, true
		}
	}
	return "", false
}

func TestRedactingReader(t *testing.T) {
	secret := "sk_live_0123456789abcdef"
	mask := strings.Repeat("*", len(secret))
	tests := map[string]struct{ in, want string }{
		"no secret":          {"hello world", "hello world"},
		"one":                {`{"key":"` + secret + `"}`, `{"key":"` + mask + `"}`},
		"several":            {secret + " and " + secret, mask + " and " + mask},
		"at the end":         {"tail " + secret, "tail " + mask},
		"a prefix, not more": {"sk_live_0123 only", "sk_live_0123 only"},
		"query-escaped form": {"next=https%3A%2F%2Fx%3Fk%3D" + "sk_live_0123456789abcdef", "next=https%3A%2F%2Fx%3Fk%3D" + mask},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			// One byte at a time: every secret is split across reads.
			r := newMaskingReader(io.NopCloser(iotest.OneByteReader(strings.NewReader(tt.in))), newMasker([]string{secret}), nil)
			got, err := io.ReadAll(r)
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	// A large body streams through with the secret removed wherever the chunks fall.
	var in bytes.Buffer
	for i := 0; i < 20000; i++ {
		in.WriteString("filler filler filler ")
		if i%997 == 0 {
			in.WriteString(secret)
		}
	}
	size := in.Len()
	got, _ := io.ReadAll(newMaskingReader(io.NopCloser(&in), newMasker([]string{secret}), nil))
	if bytes.Contains(got, []byte(secret)) || !bytes.Contains(got, []byte(mask)) || len(got) != size {
		t.Fatal("the secret survived a large body")
	}
}

// TestEncodedForms: each form an upstream may echo a credential in is masked wherever it sits
// (at every base64 alignment inside a larger blob), in a body read a byte at a time and in a
// header; ordinary text is left alone.
func TestEncodedForms(t *testing.T) {
	const secret = `sk_live/Ab+c=d&e<f>"é~9 x`
	b64 := func(enc *base64.Encoding, prefix string) string {
		return enc.EncodeToString([]byte(prefix + secret + "!tail"))
	}
	goJSON, _ := json.Marshal(secret)
	tests := map[string]string{
		"raw":                       secret,
		"query escape":              url.QueryEscape(secret),
		"path escape":               url.PathEscape(secret),
		"query escape, lowercase":   lowerEscapes(url.QueryEscape(secret)),
		"escaped twice":             url.QueryEscape(url.QueryEscape(secret)),
		"every reserved byte":       "sk_live%2FAb%2Bc%3Dd%26e%3Cf%3E%22%C3%A9~9%20x",
		"Python quote":              "sk_live/Ab%2Bc%3Dd%26e%3Cf%3E%22%C3%A9~9%20x",
		"Python quote, safe :@":     "sk_live%2FAb%2Bc%3Dd%26e%3Cf%3E%22%C3%A9~9%20x",
		"pchar":                     "sk_live%2FAb+c=d&e%3Cf%3E%22%C3%A9~9%20x",
		"path, encodeURI, WHATWG":   "sk_live/Ab+c=d&e%3Cf%3E%22%C3%A9~9%20x",
		"URLSearchParams":           "sk_live%2FAb%2Bc%3Dd%26e%3Cf%3E%22%C3%A9%7E9+x",
		"Python quote, lowercase":   "sk_live/Ab%2bc%3dd%26e%3cf%3e%22%c3%a9~9%20x",
		"Python quote, twice":       "sk_live%2FAb%252Bc%253Dd%2526e%253Cf%253E%2522%25C3%25A9~9%2520x",
		"hex":                       hex.EncodeToString([]byte(secret)),
		"HEX":                       strings.ToUpper(hex.EncodeToString([]byte(secret))),
		"base64":                    base64.StdEncoding.EncodeToString([]byte(secret)),
		"base64 raw":                base64.RawStdEncoding.EncodeToString([]byte(secret)),
		"base64url":                 base64.URLEncoding.EncodeToString([]byte(secret)),
		"base64 in a blob, +0":      b64(base64.StdEncoding, "{\"k\":\""),
		"base64 in a blob, +1":      b64(base64.StdEncoding, "{\"k\":\"x"),
		"base64 in a blob, +2":      b64(base64.StdEncoding, "{\"k\":\"xy"),
		"base64url in a blob, +1":   b64(base64.RawURLEncoding, "a"),
		"base64url in a blob, +2":   b64(base64.RawURLEncoding, "ab"),
		"JSON (Go, HTML-safe)":      string(goJSON),
		"JSON with \\/":             `sk_live\/Ab+c=d&e<f>\"é~9 x`,
		"JSON ASCII-only":           `sk_live/Ab+c=d&e<f>\"\u00e9~9 x`,
		"JSON ASCII-only uppercase": `sk_live/Ab+c=d\u0026e\u003Cf\u003E\"\u00E9~9 x`,
		// Writers that escape other sets (the outside attack's find): Gson's default (< > & = '),
		// .NET's System.Text.Json (+ < > & ' " and non-ASCII), only "=", every character.
		"JSON, Gson":      `sk_live/Ab+c\u003dd\u0026e\u003cf\u003e\"é~9 x`,
		".NET":            `sk_live/Ab\u002Bc=d\u0026e\u003Cf\u003E\u0022\u00E9~9 x`,
		"JSON, only =":    `sk_live/Ab+c\u003dd&e<f>\"é~9 x`,
		"JSON, every one": `\u0073\u006b\u005f\u006c\u0069\u0076\u0065\u002f\u0041\u0062\u002b\u0063\u003d\u0064\u0026\u0065\u003c\u0066\u003e\u0022\u00e9\u007e\u0039\u0020\u0078`,
	}
	m := newMasker([]string{secret})
	for name, form := range tests {
		t.Run(name, func(t *testing.T) {
			in := "before " + form + " after"
			got, err := io.ReadAll(newMaskingReader(io.NopCloser(iotest.OneByteReader(strings.NewReader(in))), m, nil))
			if err != nil || len(got) != len(in) {
				t.Fatalf("%q, %v", got, err)
			}
			if f, ok := containsForm(got, secret); ok || !bytes.Contains(got, []byte("*")) {
				t.Fatalf("masked %q into %q: %q survived", in, got, f)
			}
			if !strings.HasPrefix(string(got), "before ") || !strings.HasSuffix(string(got), " after") {
				t.Errorf("the text around the form changed: %q", got)
			}
			if h := m.maskString(in); h != string(got) {
				t.Errorf("header %q, body %q", h, got)
			}
		})
	}
	if s := "ordinary text, hex 0123456789abcdef and base64 c2tfbGl2ZQ=="; m.maskString(s) != s {
		t.Errorf("masked %q", m.maskString(s))
	}
}

// TestInjectedValues: what is masked for each kind of credential, Basic's decoded pair and
// password included.
func TestInjectedValues(t *testing.T) {
	req := func(h, v string) *http.Request {
		r, _ := http.NewRequest("GET", "https://u.example/a?api_key=sk+q%26%3Dlong&b=1", nil)
		if h != "" {
			r.Header.Set(h, v)
		}
		return r
	}
	basic := base64.StdEncoding.EncodeToString([]byte("user:pa:ss-word"))
	tests := map[string]struct {
		u    vault.Upstream
		r    *http.Request
		want []string
	}{
		"bearer": {vault.Upstream{Auth: vault.AuthBearer}, req("Authorization", "Bearer sk_live_bearer"), []string{"sk_live_bearer"}},
		"header": {vault.Upstream{Auth: vault.AuthHeader, Param: "X-Api-Key"}, req("X-Api-Key", "sk_header_1"), []string{"sk_header_1"}},
		"query":  {vault.Upstream{Auth: vault.AuthQuery, Param: "api_key"}, req("", ""), []string{"sk q&=long"}},
		"basic":  {vault.Upstream{Auth: vault.AuthBasic}, req("Authorization", "Basic "+basic), []string{basic, "user:pa:ss-word", "pa:ss-word"}},
		"short":  {vault.Upstream{Auth: vault.AuthHeader, Param: "X-Api-Key"}, req("X-Api-Key", "short"), nil},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := injectedValues(tt.u, tt.r)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// BenchmarkNewMasker: building the masker of a credential with many punctuation characters (the
// most JSON escape subsets), once per credential and upstream.
func BenchmarkNewMasker(b *testing.B) {
	for b.Loop() {
		newMasker([]string{`sk_live/Ab+c=d&e<f>"é~9 x'Z-0123456789abcdef`})
	}
}
