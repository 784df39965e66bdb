package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/mandate-dev/mandate/internal/vault"
)

// redacted replaces a credential the upstream echoed back.
const redacted = "[redacted]"

// minSecret is the shortest value treated as a secret to redact: shorter ones would match
// ordinary text, and no real credential is that short.
const minSecret = 8

// injectedValues are the credential values Inject put on req, in the forms an upstream may echo
// them (raw and query-escaped).
func injectedValues(u vault.Upstream, req *http.Request) []string {
	var raw []string
	switch u.Auth {
	case vault.AuthQuery:
		raw = append(raw, req.URL.Query().Get(u.Param))
	case vault.AuthHeader:
		raw = append(raw, req.Header.Get(u.Param))
	default:
		auth := req.Header.Get("Authorization")
		if _, v, ok := strings.Cut(auth, " "); ok {
			raw = append(raw, v)
		}
		raw = append(raw, auth)
	}
	var out []string
	for _, v := range raw {
		if len(v) < minSecret {
			continue
		}
		out = append(out, v)
		if q := url.QueryEscape(v); q != v {
			out = append(out, q)
		}
	}
	return out
}

func redactSecrets(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, redacted)
	}
	return s
}

// redactingReader streams a response body with every occurrence of the secrets replaced. It
// holds back the last len(longest secret)-1 bytes of what it has read, so a secret split across
// two reads is still found.
type redactingReader struct {
	src     io.ReadCloser
	secrets [][]byte
	keep    int
	buf     []byte // read, not yet checked or returned
	out     []byte // checked, ready to return
	eof     bool
}

func newRedactingReader(src io.ReadCloser, secrets []string) io.ReadCloser {
	r := &redactingReader{src: src}
	for _, s := range secrets {
		r.secrets = append(r.secrets, []byte(s))
		r.keep = max(r.keep, len(s)-1)
	}
	return r
}

func (r *redactingReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.eof {
			if len(r.buf) == 0 {
				return 0, io.EOF
			}
			r.process(true)
			continue
		}
		chunk := make([]byte, 32<<10)
		n, err := r.src.Read(chunk)
		r.buf = append(r.buf, chunk[:n]...)
		switch {
		case err == io.EOF:
			r.eof = true
		case err != nil:
			return 0, err
		}
		r.process(false)
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// process moves buf to out with every whole secret replaced; unless final, it keeps back the
// longest tail of buf that could be the start of a secret still arriving.
func (r *redactingReader) process(final bool) {
	for {
		idx, hit := -1, 0
		for _, sec := range r.secrets {
			if j := bytes.Index(r.buf, sec); j >= 0 && (idx < 0 || j < idx) {
				idx, hit = j, len(sec)
			}
		}
		if idx < 0 {
			break
		}
		r.out = append(r.out, r.buf[:idx]...)
		r.out = append(r.out, redacted...)
		r.buf = r.buf[idx+hit:]
	}
	hold := 0
	if !final {
	tail:
		for k := min(r.keep, len(r.buf)); k > 0; k-- {
			suffix := r.buf[len(r.buf)-k:]
			for _, sec := range r.secrets {
				if bytes.HasPrefix(sec, suffix) {
					hold = k
					break tail
				}
			}
		}
	}
	r.out = append(r.out, r.buf[:len(r.buf)-hold]...)
	r.buf = append([]byte(nil), r.buf[len(r.buf)-hold:]...)
}

func (r *redactingReader) Close() error { return r.src.Close() }
