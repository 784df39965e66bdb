package proxy

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/mandate-dev/mandate/internal/vault"
)

// maskByte replaces each byte of a credential the upstream echoed back. The mask keeps the
// length, so a response keeps its Content-Length and streams as the upstream sent it (a
// length-changing rewrite would force chunked encoding and a flush per write).
const maskByte = '*'

// minSecret is the shortest value treated as a secret to redact: shorter ones would match
// ordinary text, and no real credential is that short.
const minSecret = 8

// injectedValues are the credential values Inject put on req. Each is masked in every form of
// echoForms.
func injectedValues(u vault.Upstream, req *http.Request) []string {
	var raw []string
	switch u.Auth {
	case vault.AuthQuery:
		raw = append(raw, req.URL.Query().Get(u.Param))
	case vault.AuthHeader:
		raw = append(raw, req.Header.Get(u.Param))
	default:
		scheme, v, _ := strings.Cut(req.Header.Get("Authorization"), " ")
		raw = append(raw, v)
		// Basic: the header carries base64("user:password"); an upstream may echo the decoded
		// pair or the password alone.
		if strings.EqualFold(scheme, "Basic") {
			if pair, err := base64.StdEncoding.DecodeString(v); err == nil {
				_, pass, _ := strings.Cut(string(pair), ":")
				raw = append(raw, string(pair), pass)
			}
		}
	}
	out := raw[:0]
	for _, v := range raw {
		if len(v) >= minSecret && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// span is an occurrence of a form, [from, to) in the text searched.
type span struct{ from, to int }

// masker finds the injected credential values, in every form of echoForms, in response headers
// and bodies. It samples the text: every form is at least step+1 bytes long, so each occurrence
// covers a position that is a multiple of step, where the two bytes are one of the form's
// 2-grams at an offset below step. One bitset lookup per step bytes skips almost all text; only
// positions whose 2-gram some form has are compared. A masker is built once per credential
// value and shared by concurrent calls (read only).
type masker struct {
	values []string // the injected values it was built for
	names  *masker  // the forms in lowercase, for header names
	forms  [][]byte
	step   int // the shortest form's length - 1
	keep   int // the longest form's length - 1: what a streaming body holds back
	filter [1 << 16 / 64]uint64
	grams  map[uint16][]gramRef
}

type gramRef struct{ form, off int32 }

func newMasker(values []string) *masker {
	var forms []string
	for _, v := range values {
		for _, f := range echoForms(v) {
			if !slices.Contains(forms, f) {
				forms = append(forms, f)
			}
		}
	}
	m := maskerOf(forms)
	m.values = values
	// Header names arrive in canonical case (Sk_live_…): they are compared in lowercase.
	var lower []string
	for _, f := range forms {
		if l := strings.ToLower(f); !slices.Contains(lower, l) {
			lower = append(lower, l)
		}
	}
	m.names = maskerOf(lower)
	return m
}

// maskerOf is a masker of the given forms (not empty).
func maskerOf(forms []string) *masker {
	m := &masker{grams: map[uint16][]gramRef{}}
	slices.Sort(forms)
	short := len(forms[0])
	for _, f := range forms {
		m.forms = append(m.forms, []byte(f))
		short = min(short, len(f))
		m.keep = max(m.keep, len(f)-1)
	}
	m.step = max(short-1, 1)
	for i, f := range m.forms {
		for off := 0; off < m.step && off+1 < len(f); off++ {
			g := uint16(f[off])<<8 | uint16(f[off+1])
			m.filter[g>>6] |= 1 << (g & 63)
			m.grams[g] = append(m.grams[g], gramRef{int32(i), int32(off)})
		}
	}
	return m
}

// find appends the span of every occurrence of a form in b that ends after b[newStart] (those
// wholly in b[:newStart] were found before). With one, it returns at the first occurrence.
func (m *masker) find(dst []span, b []byte, newStart int, one bool) ([]span, bool) {
	lo := max(newStart-m.keep, 0)
	for p := (lo + m.step - 1) / m.step * m.step; p+1 < len(b); p += m.step {
		g := uint16(b[p])<<8 | uint16(b[p+1])
		if m.filter[g>>6]&(1<<(g&63)) == 0 {
			continue
		}
		for _, ref := range m.grams[g] {
			f := m.forms[ref.form]
			s := p - int(ref.off)
			e := s + len(f)
			if s < 0 || e > len(b) || e <= newStart || !bytes.Equal(b[s:e], f) {
				continue
			}
			if one {
				return dst, true
			}
			dst = append(dst, span{s, e})
		}
	}
	return dst, len(dst) > 0
}

// maskString returns s with every occurrence of a form masked; s itself when there is none.
func (m *masker) maskString(s string) string {
	// Read only: the search never writes through this view of the string.
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	if _, found := m.find(nil, b, 0, true); !found {
		return s
	}
	out := []byte(s)
	spans, _ := m.find(nil, b, 0, false)
	for _, sp := range spans {
		fill(out[sp.from:sp.to], maskByte)
	}
	return string(out)
}

// maskHeader masks every value of h in place. A header whose name holds a form, in any case,
// is dropped. A value that holds a form once its spaces and tabs are removed is masked whole:
// a client joins a folded line (obs-fold) with a space, which would split the form.
func (m *masker) maskHeader(h http.Header) {
	var name [64]byte
	var buf []byte
	for k, vs := range h {
		lower := append(name[:0], k...)
		for j, c := range lower {
			if 'A' <= c && c <= 'Z' {
				lower[j] = c + 'a' - 'A'
			}
		}
		if _, found := m.names.find(nil, lower, 0, true); found {
			delete(h, k)
			continue
		}
		for i, v := range vs {
			vs[i] = m.maskString(v)
			if !strings.ContainsAny(v, " \t") {
				continue
			}
			buf = buf[:0]
			for j := 0; j < len(v); j++ {
				if v[j] != ' ' && v[j] != '\t' {
					buf = append(buf, v[j])
				}
			}
			if _, found := m.find(nil, buf, 0, true); found {
				vs[i] = strings.Repeat(string(maskByte), len(v))
			}
		}
	}
}

// fill sets every byte of b to c.
func fill(b []byte, c byte) {
	for i := range b {
		b[i] = c
	}
}

// maskingReader streams a response body with every occurrence of a form masked. It searches
// the bytes as the upstream sent them and masks on the way out, so overlapping forms are all
// found. It always holds back the last keep bytes read (the longest form's length - 1), whatever
// they are, so a form split across reads is still found: the held tail goes out when more bytes
// arrive or at the end. The length held back never depends on the content: holding back only a
// tail that starts a form would tell an agent who makes the upstream echo its guess, and pause,
// whether the guess is a prefix of the credential (a prefix oracle). No timer releases the tail
// early: a pause of the upstream's inside a credential would release its first part.
type maskingReader struct {
	src     io.ReadCloser
	m       *masker
	onClose func() // masks the trailers, which the source fills in at its end
	pooled  *[]byte
	buf     []byte
	start   int // buf[start:ready] is searched and not yet returned
	ready   int
	end     int // buf[ready:end] is read and held back
	spans   []span
	eof     bool
}

// maskBuffers hold a body's read-ahead: 32 KiB reads plus the held-back tail.
var maskBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func newMaskingReader(src io.ReadCloser, m *masker, onClose func()) io.ReadCloser {
	r := &maskingReader{src: src, m: m, onClose: onClose}
	if m.keep <= 32<<10 {
		r.pooled = maskBuffers.Get().(*[]byte)
		r.buf = *r.pooled
	} else {
		r.buf = make([]byte, m.keep+32<<10)
	}
	return r
}

func (r *maskingReader) Read(p []byte) (int, error) {
	for r.start == r.ready {
		if r.eof {
			return 0, io.EOF
		}
		// Move the held-back tail to the front, with the spans that reach into it.
		r.end = copy(r.buf, r.buf[r.ready:r.end])
		spans := r.spans[:0]
		for _, sp := range r.spans {
			if sp.to > r.ready {
				spans = append(spans, span{max(sp.from-r.ready, 0), sp.to - r.ready})
			}
		}
		r.spans = spans
		r.start, r.ready = 0, 0
		n, err := r.src.Read(r.buf[r.end:])
		from := r.end
		r.end += n
		switch {
		case err == io.EOF:
			r.eof = true
		case err != nil:
			return 0, &maskedError{err, r.m}
		}
		r.spans, _ = r.m.find(r.spans, r.buf[:r.end], from, false)
		r.ready = r.end
		if !r.eof {
			r.ready = max(r.end-r.m.keep, 0)
		}
	}
	n := copy(p, r.buf[r.start:r.ready])
	for _, sp := range r.spans {
		if from, to := max(sp.from, r.start), min(sp.to, r.start+n); from < to {
			fill(p[from-r.start:to-r.start], maskByte)
		}
	}
	r.start += n
	return n, nil
}

func (r *maskingReader) Close() error {
	err := r.src.Close()
	if r.onClose != nil {
		r.onClose()
	}
	if r.pooled != nil {
		maskBuffers.Put(r.pooled)
		r.pooled, r.buf = nil, nil
	}
	return err
}
