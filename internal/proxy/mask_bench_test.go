package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/vault"
)

// BenchmarkMaskingReader streams a 1 MiB JSON-like answer with no credential in it through the
// masking of a 28-byte credential, in 32 KiB reads (as ReverseProxy copies).
func BenchmarkMaskingReader(b *testing.B) {
	body := []byte(strings.Repeat(`{"id":12345,"name":"sk_live widget","tags":["a","b"],"hash":"c2tfbGl2ZV9SRUFM0f3a9"},`, 1<<20/86))
	m := newMasker([]string{realSecret})
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r := newMaskingReader(io.NopCloser(bytes.NewReader(body)), m, nil)
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}

// BenchmarkMaskAnswer is the masking work of one BenchmarkProxy call: the injected values, the
// response headers and the small JSON body, read as ReverseProxy reads it.
func BenchmarkMaskAnswer(b *testing.B) {
	u := vault.Upstream{Name: "bench", Auth: vault.AuthHeader, Param: "X-Api-Key"}
	req, _ := http.NewRequest("GET", "http://up.example/v3/site-explorer/overview?target=example.com", nil)
	req.Header.Set("X-Api-Key", realSecret)
	m := newMasker(injectedValues(u, req)) // built once per credential
	buf := make([]byte, 32<<10)
	b.ReportAllocs()
	for b.Loop() {
		if vs := injectedValues(u, req); len(vs) == 0 {
			b.Fatal("no value")
		}
		h := http.Header{"Content-Type": {"application/json"}, "Date": {"Thu, 03 Dec 2026 12:00:00 GMT"}, "Content-Length": {"73"}}
		for _, vs := range h {
			for i, v := range vs {
				vs[i] = m.maskString(v)
			}
		}
		r := newMaskingReader(io.NopCloser(bytes.NewReader(benchBody)), m, nil)
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}
