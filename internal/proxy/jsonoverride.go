package proxy

import (
	"bytes"
	"net/http"
	"strings"
)

// A JSON body is the third place a method override hides: Laravel puts a JSON body's decoded
// top-level members in the request bag that Symfony's getMethod reads _method from on a POST,
// and Express's method-override with a getter reading req.body._method does the same after
// body-parser's JSON. Both read top-level members only (a nested _method is data, never the
// method), so the proxy refuses a top-level member whose name is an override name as
// nameMatcher reads it, found as the body streams through formReader.

// JSON kinds of formReader: a body sent as JSON, and a body of another type that may be JSON
// to an upstream parsing every body as JSON (body-parser's json({type: '*/*'})).
const (
	formJSON = formMultipart + 1 + iota
	formJSONSniffed
)

// jsonOf decides whether a body that is no form is read as JSON upstream: its Content-Type
// contains "/json" or "+json" in any case (Laravel's isJson, a superset of Express's type
// check), or it is another type and may be JSON. A JSON body must come without
// Content-Encoding (Express inflates one the proxy cannot read) in a charset whose ASCII bytes
// are ASCII (body-parser decodes UTF-16). A body of another type is read only when it can be.
func jsonOf(h http.Header) (kind int, boundary string, e *refusal) {
	vals := h.Values("Content-Type")
	ascii := true
	for _, v := range vals {
		for rest := strings.ToLower(v); ; {
			_, after, ok := strings.Cut(rest, "charset=")
			if !ok {
				break
			}
			rest = after
			cs, _, _ := strings.Cut(strings.TrimLeft(after, `"`), ";")
			ascii = ascii && asciiCharset(strings.Trim(cs, `" `))
		}
	}
	if !mentionsJSON(vals) {
		if ascii && identityOnly(h) {
			return formJSONSniffed, "", nil
		}
		return 0, "", nil
	}
	if !identityOnly(h) {
		return 0, "", refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyEncoding,
			"the proxy reads JSON bodies to refuse method overrides and cannot read an encoded one: send the JSON without Content-Encoding")
	}
	if !ascii {
		return 0, "", refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyContentType,
			"the proxy reads JSON member names as UTF-8: send the JSON in UTF-8, with charset=utf-8 or no charset")
	}
	return formJSON, "", nil
}

// mentionsJSON reports whether some Content-Type value says the body is JSON to Laravel
// (which looks for "/json" or "+json" anywhere in the header) or to Express.
func mentionsJSON(vals []string) bool {
	for _, v := range vals {
		v = strings.ToLower(v)
		if strings.Contains(v, "/json") || strings.Contains(v, "+json") {
			return true
		}
	}
	return false
}

// jsonScanner tracks where a JSON body is: the nesting depth and whether the bytes are inside a
// string. A string at depth 1 of a top-level object not right after ":" is a member name: it is
// decoded (JSON escapes, and JSON5's \x and identity escapes, which only strict parsers refuse)
// and held back while nameMatcher has not decided it. Bytes no JSON has outside a string (a
// quote ', a comment, an unquoted name) lose the scanner its place where a lenient parser
// (JSON5, Hjson, Jackson's options) may still find members: from there a body sent as JSON is
// refused if it names a method in any case or has a \u or \x escape; a body of another type,
// which strict parsers refuse, is no longer read.
type jsonScanner struct {
	typed   bool // sent as JSON (formJSON)
	started bool // a byte other than white space or a BOM was seen
	off     bool // no JSON: not read further
	depth   int
	topObj  bool // the value at depth 1 is an object
	colon   bool // at depth 1 the last byte outside strings was ":"
	str     bool // inside a string
	key     bool // the string is a top-level member name still undecided
	esc     int  // in a string: 1 after "\"; in a name, 2 while reading hex digits
	hex     int  // a \u or \x escape's value so far
	nhex    int  // its hex digits still to come
	held    int  // bytes of the name held back
	m       nameMatcher
	lost    bool // the scanner lost its place (typed only)
	word    int  // lost: letters of "method" matched
	whold   int  // lost: bytes held back with them
	bs      bool // lost: the last byte was "\"
}

func (s *jsonScanner) scan(buf []byte, fresh int) (int, error) {
	b := buf[len(buf)-fresh:]
	for i := 0; i < len(b) && !s.off; {
		switch {
		case s.lost:
			return s.scanLost(b[i:])
		case s.key:
			n, err := s.scanName(b[i:])
			if err != nil {
				return 0, err
			}
			i += n
		case s.str:
			i += s.skipString(b[i:])
		case s.depth > 1 || s.depth == 1 && !s.topObj:
			i += s.skipDeep(b[i:])
			if i < len(b) && jsonClass[b[i]] == classOther {
				s.lose()
			}
		default:
			if err := s.outside(b[i]); err != nil {
				return 0, err
			}
			if !s.lost {
				i++
			}
		}
	}
	if s.key {
		return s.held, nil
	}
	return 0, nil
}

// outside reads one byte outside strings.
func (s *jsonScanner) outside(c byte) error {
	switch c {
	case ' ', '\t', '\n', '\r':
		return nil
	}
	if !s.started {
		switch {
		case c == 0xEF || c == 0xBB || c == 0xBF: // a UTF-8 BOM, which body-parser drops
			return nil
		case !s.typed && c != '{':
			s.off = true // a body of another type is read only if it starts as an object
			return nil
		case c == 0 || c == 0xFE || c == 0xFF:
			return &formError{refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyContentType,
				"the body sent as JSON looks like UTF-16 or UTF-32, whose member names the proxy cannot read: send the JSON in UTF-8")}
		}
		s.started = true
	}
	switch c {
	case '"':
		s.str, s.esc = true, 0
		if s.depth == 1 && s.topObj && !s.colon {
			s.key, s.m, s.held = true, nameMatcher{}, 0
		}
	case '{', '[':
		s.depth++
		if s.depth == 1 {
			s.topObj = c == '{'
		}
	case '}', ']':
		if s.depth == 0 {
			s.lose()
			return nil
		}
		s.depth--
	case ':':
		s.colon = s.depth == 1
		return nil
	default:
		if !jsonPlain[c] {
			s.lose()
			return nil
		}
	}
	s.colon = false
	return nil
}

// jsonPlain are the bytes outside strings that change nothing: those of numbers, true, false,
// null, and ",".
var jsonPlain = func() (t [256]bool) {
	for _, c := range []byte("0123456789-+.eEtruefalsn,") {
		t[c] = true
	}
	return t
}()

func (s *jsonScanner) lose() {
	if s.typed {
		s.lost = true
	} else {
		s.off = true
	}
}

// Byte classes below the top level, where only nesting and strings matter.
const (
	classPlain = iota // white space, ",", ":", bytes of numbers and literals
	classQuote
	classOpen
	classClose
	classOther // no JSON outside a string
)

var jsonClass = func() (t [256]byte) {
	for c := range t {
		switch {
		case c == '"':
			t[c] = classQuote
		case c == '{' || c == '[':
			t[c] = classOpen
		case c == '}' || c == ']':
			t[c] = classClose
		case jsonPlain[c] || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r':
			t[c] = classPlain
		default:
			t[c] = classOther
		}
	}
	return t
}()

// skipDeep runs over bytes where no top-level member name can start (below the top level, or
// in a top-level array) in one tight loop, the path of most of a body's bytes. It returns how
// many it read: all of b, or up to the top level, or up to a byte of classOther.
func (s *jsonScanner) skipDeep(b []byte) int {
	i := 0
	for i < len(b) {
		c := b[i]
		if s.str {
			i++
			switch c {
			case '\\':
				if i == len(b) {
					s.esc = 1 // skipString skips the escaped byte
					return i
				}
				i++
			case '"':
				s.str = false
			}
			continue
		}
		switch jsonClass[c] {
		case classQuote:
			s.str = true
		case classOpen:
			s.depth++
		case classClose:
			s.depth--
			if s.depth <= 1 {
				s.colon = false
				return i + 1
			}
		case classOther:
			return i
		}
		i++
	}
	return i
}

// skipString skips string bytes up to the closing quote and returns how many it read.
func (s *jsonScanner) skipString(b []byte) int {
	i := 0
	if s.esc == 1 {
		s.esc, i = 0, 1
	}
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			if backslashesBefore(b, len(b), i)%2 == 1 {
				s.esc = 1
			}
			return len(b)
		}
		k := i + j
		if backslashesBefore(b, k, i)%2 == 1 {
			i = k + 1
			continue
		}
		s.str = false
		return k + 1
	}
}

// backslashesBefore counts the backslashes right before b[k], not looking before b[from].
func backslashesBefore(b []byte, k, from int) int {
	n := 0
	for k-n-1 >= from && b[k-n-1] == '\\' {
		n++
	}
	return n
}

// maxHeldName bounds a member name held back undecided. An override name takes at most 23
// escapes of 18 bytes (\u0025 and two hex digits as \u00XX); only a name padded with JSON5 line
// continuations, which strict parsers refuse, holds more, and is refused, as JSON5 may join it.
const maxHeldName = 512

// scanName reads a member name's bytes until it ends or is decided not to be an override, and
// returns how many it read.
func (s *jsonScanner) scanName(b []byte) (int, error) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		s.held++
		if s.held > maxHeldName {
			return 0, errOverride
		}
		switch s.esc {
		case 0:
			if c == '"' {
				s.str, s.key, s.held = false, false, 0
				if s.m.end() {
					return 0, errOverride
				}
				return i + 1, nil
			}
			if c == '\\' {
				s.esc = 1
				continue
			}
		case 1:
			s.esc = 0
			switch c {
			case 'u', 'x':
				s.esc, s.hex, s.nhex = 2, 0, 4
				if c == 'x' {
					s.nhex = 2
				}
				continue
			case '\n', '\r': // JSON5's line continuation: no byte of the name
				s.skipHeld()
				continue
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			}
		case 2:
			v, ok := unhex(c)
			if !ok {
				// No escape: the name is no override, and the byte is read again as itself
				// (it may end the string).
				s.esc, s.key, s.held = 0, false, 0
				return i, nil
			}
			s.hex, s.nhex = s.hex<<4|int(v), s.nhex-1
			if s.nhex > 0 {
				continue
			}
			s.esc, c = 0, byte(min(s.hex, 0x80)) // 0x80: not ASCII, so no override
		}
		switch s.m.add(c) {
		case nameMatch:
			return 0, errOverride
		case nameNoMatch:
			s.key, s.held = false, 0 // the rest of the string is skipped
			return i + 1, nil
		}
		s.skipHeld()
	}
	return len(b), nil
}

// skipHeld releases the name's bytes while nothing of it is read: leading spaces (and line
// continuations) decide nothing, so a name of them is not held back however long.
func (s *jsonScanner) skipHeld() {
	if s.m.n == 0 && !s.m.pct {
		s.held = 0
	}
}

// scanLost reads the rest of a body that lost the scanner its place: "method" in any case,
// backslashes and NULs before its letters ignored (JSON5's identity escapes; UTF-16, which
// Jackson detects from the bytes), or a \u or \x escape is
// refused, as a lenient parser may read it in a member name. The bytes that may begin either
// are held back.
func (s *jsonScanner) scanLost(b []byte) (int, error) {
	for _, c := range b {
		if s.bs {
			s.bs = false
			if c == '\\' { // an escaped backslash: no escape, and no letter
				s.word, s.whold = 0, 0
				continue
			}
			if c|0x20 == 'u' || c|0x20 == 'x' {
				return 0, errOverride
			}
		} else if c == '\\' {
			s.bs = true
			if s.word > 0 {
				s.whold++
			}
			continue
		}
		switch lc := c | 0x20; { // only letters fold onto the letters of "method"
		case c == 0: // UTF-16 or -32 read as bytes: "m\x00e\x00…" names a method too
			if s.word > 0 {
				s.whold++
			}
			if s.whold > 64 { // more than UTF-32 with escapes: no name, and not held
				s.word, s.whold = 0, 0
			}
		case lc == "method"[s.word]:
			s.word++
			s.whold++
			if s.word == len("method") {
				return 0, errOverride
			}
		case lc == 'm':
			s.word, s.whold = 1, 1
		default:
			s.word, s.whold = 0, 0
		}
	}
	if s.bs && s.word == 0 {
		return 1, nil
	}
	return s.whold, nil
}

func (s *jsonScanner) end([]byte) error { return nil }
