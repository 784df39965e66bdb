package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/mandate-dev/mandate/internal/vault"
)

// maskByte replaces each byte of a credential the upstream echoed back. The mask keeps the
// length, so a response keeps its Content-Length and streams as the upstream sent it (a
// length-changing rewrite would force chunked encoding and a flush per write).
const maskByte = '*'

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
		s = strings.ReplaceAll(s, sec, strings.Repeat(string(maskByte), len(sec)))
	}
	return s
}

// redactingReader streams a response body with every occurrence of the secrets masked in place.
// It holds back the longest tail of what it has read that could be the start of a secret, so a
// secret split across two reads is still found.
type redactingReader struct {
	src     io.ReadCloser
	secrets [][]byte
	keep    int     // the longest secret's length - 1: the most ever held back
	pooled  *[]byte // buf's pool entry, returned on Close
	buf     []byte
	start   int // buf[start:ready] is checked and not yet returned
	ready   int
	end     int // buf[ready:end] is read and held back
	eof     bool
}

// redactBuffers hold a body's read-ahead: 32 KiB reads plus the held-back tail.
var redactBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func newRedactingReader(src io.ReadCloser, secrets []string) io.ReadCloser {
	r := &redactingReader{src: src}
	for _, s := range secrets {
		r.secrets = append(r.secrets, []byte(s))
		r.keep = max(r.keep, len(s)-1)
	}
	if r.keep <= 32<<10 {
		r.pooled = redactBuffers.Get().(*[]byte)
		r.buf = *r.pooled
	} else {
		r.buf = make([]byte, r.keep+32<<10)
	}
	return r
}

func (r *redactingReader) Read(p []byte) (int, error) {
	for r.start == r.ready {
		if r.eof {
			if r.ready == r.end {
				return 0, io.EOF
			}
			r.ready = r.end // nothing more can complete a secret
			continue
		}
		// Move the held-back tail to the front and read after it.
		r.end = copy(r.buf, r.buf[r.ready:r.end])
		r.start, r.ready = 0, 0
		n, err := r.src.Read(r.buf[r.end:])
		from := max(r.end-r.keep, 0) // a secret may start in the held-back tail
		r.end += n
		switch {
		case err == io.EOF:
			r.eof = true
		case err != nil:
			return 0, err
		}
		r.mask(from)
		r.ready = r.end - r.hold()
	}
	n := copy(p, r.buf[r.start:r.ready])
	r.start += n
	return n, nil
}

// mask overwrites every whole secret in buf[from:end].
func (r *redactingReader) mask(from int) {
	for _, sec := range r.secrets {
		for i := from; ; {
			j := bytes.Index(r.buf[i:r.end], sec)
			if j < 0 {
				break
			}
			i += j
			for k := range len(sec) {
				r.buf[i+k] = maskByte
			}
			i += len(sec)
		}
	}
}

// hold is the length of the longest tail of buf[:end] that could be the start of a secret still
// arriving; 0 at the end of the body.
func (r *redactingReader) hold() int {
	if r.eof {
		return 0
	}
	for k := min(r.keep, r.end); k > 0; k-- {
		suffix := r.buf[r.end-k : r.end]
		for _, sec := range r.secrets {
			if bytes.HasPrefix(sec, suffix) {
				return k
			}
		}
	}
	return 0
}

func (r *redactingReader) Close() error {
	if r.pooled != nil {
		redactBuffers.Put(r.pooled)
		r.pooled, r.buf = nil, nil
	}
	return r.src.Close()
}
