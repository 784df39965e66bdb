package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
)

// A form body is a second place a method override hides: Rails (Rack::MethodOverride),
// Laravel, Symfony, Spring and Express read a _method field of a POST form as the request's
// method. The route check saw the real method, so the proxy never forwards such a field. It
// scans form bodies as they stream (nothing else is held back: a key while it may still be an
// override name, a multipart part's header block), and stops the body on an override, so the
// upstream receives neither the field nor a complete body.

// maxPartHeader bounds a multipart part's header block (from its boundary to the blank line
// that ends it), which is held back until complete.
const maxPartHeader = 16 << 10

// Form kinds.
const (
	formURLEncoded = iota + 1
	formMultipart
)

// formOf decides whether the request's body is read as a form upstream, and how, from its
// Content-Type: application/x-www-form-urlencoded; multipart/* (Rack parses every multipart
// type); none or an empty one (Rack reads a POST body without a type as a form). The media
// type is read as leniently as PHP does (cut at ";", "," or a space, any case). A form body
// must come with one Content-Type, no Content-Encoding (an encoded body cannot be scanned), a
// charset whose ASCII bytes are ASCII, and for multipart one plain boundary, which is what the
// upstream receives as the only Content-Type. It returns 0 for a body that is no form.
func formOf(r *http.Request) (kind int, boundary string, e *refusal) {
	if r.Body == nil || r.Body == http.NoBody {
		return 0, "", nil
	}
	vals := r.Header.Values("Content-Type")
	form, items := len(vals) == 0, 0
	for _, v := range vals {
		for item := range strings.SplitSeq(v, ",") {
			items++
			mt := leadingMediaType(item)
			form = form || mt == "" || mt == "application/x-www-form-urlencoded" || strings.HasPrefix(mt, "multipart/")
		}
	}
	if !form {
		return jsonOf(r.Header)
	}
	ctRefusal := func(desc string) (int, string, *refusal) {
		return 0, "", refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyContentType, desc)
	}
	if items > 1 || mentionsJSON(vals) { // Laravel reads a type that mentions JSON as JSON
		return ctRefusal("a form body is read differently by upstreams when it has several media types or mentions JSON: send one Content-Type header with one media type")
	}
	if !identityOnly(r.Header) {
		return 0, "", refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyEncoding,
			"the proxy reads form bodies to refuse method overrides and cannot read an encoded one: send the form without Content-Encoding")
	}
	if len(vals) == 0 || strings.TrimSpace(vals[0]) == "" {
		return formURLEncoded, "", nil
	}
	mt, params, err := mime.ParseMediaType(vals[0])
	if err != nil || mt != leadingMediaType(vals[0]) {
		return ctRefusal("the Content-Type of the form body is not a valid media type: send application/x-www-form-urlencoded or multipart/form-data; boundary=…")
	}
	if mt == "application/x-www-form-urlencoded" {
		if cs, ok := params["charset"]; ok && !asciiCharset(cs) {
			return ctRefusal("the proxy reads form names as ASCII: send the form in UTF-8 (or another charset whose ASCII bytes are ASCII)")
		}
		return formURLEncoded, "", nil
	}
	boundary = params["boundary"]
	if !plainBoundary(boundary) {
		return ctRefusal("send the multipart body with one boundary of 1 to 70 letters, digits or '()+_-./:=? (as multipart libraries make)")
	}
	// Parsers find the boundary parameter differently (the first, the last "boundary=" in the
	// header, quoted or not): the upstream gets it alone.
	r.Header["Content-Type"] = []string{mime.FormatMediaType(mt, map[string]string{"boundary": boundary})}
	return formMultipart, boundary, nil
}

// leadingMediaType is the media type at the start of a Content-Type item, lower-cased, cut at
// ";", "," or white space as PHP cuts it.
func leadingMediaType(v string) string {
	v = strings.TrimLeft(v, " \t")
	if i := strings.IndexAny(v, "; ,\t"); i >= 0 {
		v = v[:i]
	}
	return strings.ToLower(v)
}

// asciiCharset reports whether a charset maps every byte below 0x80 to that ASCII character
// and never folds other bytes into one (UTF-8, ASCII, the ISO 8859 and Windows single-byte
// sets): a name read from its bytes is the name a decoding framework reads. Not UTF-16/32,
// UTF-7 or the ISO 2022 sets, whose "_method" has other bytes.
func asciiCharset(cs string) bool {
	cs = strings.ToLower(strings.TrimSpace(cs))
	switch cs {
	case "utf-8", "utf8", "us-ascii", "ascii", "latin1", "latin-1":
		return true
	}
	for _, p := range [...]string{"iso-8859-", "iso8859-", "windows-125", "cp125"} {
		if rest, ok := strings.CutPrefix(cs, p); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}

// plainBoundary reports whether b is a boundary every parser reads alike: RFC 2046 characters
// without space or "," (which cut it in some parsers).
func plainBoundary(b string) bool {
	if len(b) == 0 || len(b) > 70 {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("'()+_-./:=?", c) >= 0) {
			return false
		}
	}
	return true
}

// formError stops a form body the proxy refuses; the refusal is the agent's answer.
type formError struct{ e *refusal }

func (e *formError) Error() string { return "proxy: " + e.e.desc }

// formScanner finds what a form body must not carry. scan gets the bytes not yet released
// (those held back before, then fresh new ones at the end) and returns how many of the last
// ones to hold back; end is called once at the body's end with the bytes still held.
type formScanner interface {
	scan(buf []byte, fresh int) (hold int, err error)
	end(held []byte) error
}

// formReader streams a form body through its scanner, holding back only what the scanner asks.
type formReader struct {
	src     io.ReadCloser
	method  string // the request's, for the refusal
	s       formScanner
	buf     []byte // buf[off:ready] may be returned; buf[ready:] is held back
	off     int
	ready   int
	err     error
	refused atomic.Pointer[refusal]
}

func newFormReader(src io.ReadCloser, kind int, boundary, method string) *formReader {
	r := &formReader{src: src, method: method, buf: make([]byte, 0, 32<<10+maxPartHeader+128)}
	switch kind {
	case formMultipart:
		r.s = &multipartScanner{delim: []byte("--" + boundary)}
	case formJSON, formJSONSniffed:
		r.s = &jsonScanner{typed: kind == formJSON}
	default:
		r.s = &urlencodedScanner{}
	}
	return r
}

func (r *formReader) Read(p []byte) (int, error) {
	for r.off == r.ready {
		if r.err != nil {
			return 0, r.err
		}
		// Keep the held bytes; read after them.
		held := copy(r.buf[:cap(r.buf)], r.buf[r.ready:])
		r.buf, r.off, r.ready = r.buf[:held], 0, 0
		n, err := r.src.Read(r.buf[held:cap(r.buf)])
		r.buf = r.buf[:held+n]
		hold, serr := r.s.scan(r.buf, n)
		if serr == nil && err == io.EOF {
			serr, hold = r.s.end(r.buf[len(r.buf)-hold:]), 0
		}
		if serr == errOverride {
			serr = overrideRefusal(r.method)
		}
		if serr != nil {
			var fe *formError
			if errors.As(serr, &fe) {
				r.refused.Store(fe.e)
			}
			r.buf, r.err = r.buf[:0], serr
			return 0, serr
		}
		if err != nil {
			r.err = err
			if err != io.EOF {
				return 0, err // what is held back is never sent
			}
		}
		r.ready = len(r.buf) - hold
	}
	n := copy(p, r.buf[r.off:r.ready])
	r.off += n
	return n, nil
}

func (r *formReader) Close() error { return r.src.Close() }

func overrideRefusal(method string) *formError {
	return &formError{refuse(http.StatusBadRequest, "invalid_request", reasonMethodOverride,
		fmt.Sprintf("the body has a method override field or member (such as _method), which the proxy refuses: the token's routes were checked for %s, so call the upstream with the method you mean instead", safeMethod(method)))}
}

// errOverride is the scanners' finding; formReader's owner turns it into the refusal.
var errOverride = errors.New("method override field")

// urlencodedScanner reads keys of an application/x-www-form-urlencoded body: split at "&" and
// ";" (older Rack, Java), a key ending at "=". A key is held back while it may still be an
// override name and released as soon as it cannot.
type urlencodedScanner struct {
	inValue bool
	dead    bool // the current key cannot be an override
	held    int  // bytes of the current key held back
	m       nameMatcher
}

func (s *urlencodedScanner) scan(buf []byte, fresh int) (int, error) {
	b := buf[len(buf)-fresh:]
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '&' || c == ';' {
			if !s.inValue && !s.dead && s.m.end() {
				return 0, errOverride
			}
			s.inValue, s.dead, s.held = false, false, 0
			s.m = nameMatcher{}
			continue
		}
		if s.inValue || s.dead {
			// Skip to the next separator.
			j := i
			for j < len(b) && b[j] != '&' && b[j] != ';' {
				j++
			}
			i = j - 1
			continue
		}
		if c == '=' {
			if s.m.end() {
				return 0, errOverride
			}
			s.inValue, s.held = true, 0
			continue
		}
		s.held++
		switch s.m.add(c) {
		case nameNoMatch:
			s.dead, s.held = true, 0
		case nameMatch:
			return 0, errOverride
		default:
			if s.m.n == 0 && !s.m.pct {
				s.held = 0 // leading spaces decide nothing: not held
			}
		}
	}
	return s.held, nil
}

func (s *urlencodedScanner) end([]byte) error {
	if !s.inValue && !s.dead && s.m.end() {
		return errOverride
	}
	return nil
}

// multipartScanner finds every place a part's header block may start (each "--boundary",
// also where a parser would not expect one: PHP takes any line that begins with it) and holds
// the block back until the first CRLF CRLF after it, the latest any parser ends it, to check
// the names it gives the part.
type multipartScanner struct {
	delim    []byte
	inHeader bool // buf begins with a header block (at its delimiter)
}

func (s *multipartScanner) scan(buf []byte, fresh int) (int, error) {
	pos := 0
	for {
		if !s.inHeader {
			i := bytes.Index(buf[pos:], s.delim)
			if i < 0 {
				return partialSuffix(buf[pos:], s.delim), nil
			}
			pos += i
			s.inHeader = true
		}
		block := buf[pos:]
		j := bytes.Index(block[len(s.delim):], []byte("\r\n\r\n"))
		if j >= 0 {
			block = block[:len(s.delim)+j+4]
		}
		if len(block) > maxPartHeader {
			return 0, &formError{refuse(http.StatusBadRequest, "invalid_request", reasonBodyInvalid,
				fmt.Sprintf("a part of the multipart body has more than %d KiB of headers, or the boundary occurs inside a part: use a boundary that occurs nowhere else", maxPartHeader>>10))}
		}
		if j < 0 {
			return len(block), nil
		}
		if partOverrides(block[len(s.delim):]) {
			return 0, errOverride
		}
		pos += len(block)
		s.inHeader = false
	}
}

func (s *multipartScanner) end(held []byte) error {
	if s.inHeader && partOverrides(held[len(s.delim):]) {
		return errOverride
	}
	return nil
}

// partialSuffix is the length of the longest end of b that begins delim.
func partialSuffix(b, delim []byte) int {
	for k := min(len(delim)-1, len(b)); k > 0; k-- {
		if bytes.HasSuffix(b, delim[:k]) {
			return k
		}
	}
	return 0
}

// partOverrides reports whether a part's header block (after its boundary) names the part as
// an override in any parser's reading: the name and filename of a Content-Disposition line as
// Go reads them (RFC 2231 name*= and continuations); the value of every name= or name*=
// anywhere in the block, quoted or not (Rack's and PHP's regular expressions, which also take
// a filename for a missing name); and every Content-ID (Rack's name of last resort). Each
// reading stops as soon as it is decided, so a block costs time linear in its length.
func partOverrides(block []byte) bool {
	lower := make([]byte, len(block)) // ASCII only: the same length as block
	for i, c := range block {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	return anyAfter(lower, "\ncontent-disposition", func(i int) bool {
		_, params, err := mime.ParseMediaType(headerValue(block[i:]))
		return err == nil && (isOverrideName(params["name"]) || isOverrideName(params["filename"]))
	}) || anyAfter(lower, "name", func(i int) bool {
		rest := bytes.TrimLeft(block[i:], " \t\r\n")
		if len(rest) > 0 && rest[0] == '*' {
			rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		}
		return len(rest) > 0 && rest[0] == '=' && valueOverrides(bytes.TrimLeft(rest[1:], " \t\r\n"))
	}) || anyAfter(lower, "content-id", func(i int) bool {
		rest := bytes.TrimLeft(block[i:], " \t")
		if len(rest) == 0 || rest[0] != ':' {
			return false
		}
		rest = bytes.TrimLeft(rest[1:], " \t")
		return tokenOverrides(rest, " \t\r\n") || len(rest) > 0 && rest[0] == '<' && tokenOverrides(bytes.TrimLeft(rest[1:], " \t"), " \t\r\n>")
	})
}

// anyAfter reports whether f holds at the index after some occurrence of word in lower.
func anyAfter(lower []byte, word string, f func(i int) bool) bool {
	for i := 0; ; {
		j := bytes.Index(lower[i:], []byte(word))
		if j < 0 {
			return false
		}
		i += j + len(word)
		if f(i) {
			return true
		}
	}
}

// headerValue is the value after a header name: from the ":" to the end of the line, folded
// lines joined.
func headerValue(b []byte) string {
	b = bytes.TrimLeft(b, " \t")
	if len(b) == 0 || b[0] != ':' {
		return ""
	}
	b = b[1:]
	end := 0
	for end < len(b) {
		nl := bytes.IndexByte(b[end:], '\n')
		if nl < 0 {
			end = len(b)
			break
		}
		end += nl + 1
		if end >= len(b) || (b[end] != ' ' && b[end] != '\t') {
			break
		}
	}
	return strings.Join(strings.Fields(string(b[:end])), " ")
}

// tokenOverrides reads a name at the start of b up to a byte of stop and reports whether it is
// an override.
func tokenOverrides(b []byte, stop string) bool {
	var m nameMatcher
	for _, c := range b {
		if strings.IndexByte(stop, c) >= 0 {
			break
		}
		if r := m.add(c); r != nameUndecided {
			return r == nameMatch
		}
	}
	return m.end()
}

// valueOverrides reads a parameter value at the start of b, quoted or a token, and reports
// whether it is an override name as sent, with a quoted string's backslash escapes read, or as
// the value of an RFC 2231 charset'language'percent-encoded one (after the last "'").
func valueOverrides(b []byte) bool {
	quoted := len(b) > 0 && b[0] == '"'
	if quoted {
		b = b[1:]
	}
	var asIs, unescaped, ext nameMatcher
	extOK := true // the bytes so far may be an RFC 2231 value
	escaped := false
	for _, c := range b {
		if quoted && c == '"' && !escaped || !quoted && strings.IndexByte(" \t\r\n;,\"", c) >= 0 {
			break
		}
		if asIs.add(c) == nameMatch {
			return true
		}
		if quoted && c == '\\' && !escaped {
			escaped = true
		} else {
			escaped = false
			if unescaped.add(c) == nameMatch {
				return true
			}
		}
		switch {
		case !extOK:
		case c == '\'':
			ext = nameMatcher{}
		case c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0:
			extOK = false
		case ext.add(c) == nameMatch:
			return true
		}
		if asIs.nesc < 0 && unescaped.nesc < 0 && !extOK {
			return false
		}
	}
	return asIs.end() || unescaped.end() || extOK && ext.end()
}
