package proxy

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// echoForms are the forms in which an upstream may echo a credential value v: as is; URL-escaped
// by each of urlEncoders and Go's url.PathEscape (also escaped twice, as in a URL inside a query
// parameter; hex digits in either case); hex in either case; base64 and
// base64url, of the whole value (padded or not) and, because v may sit anywhere inside a larger
// encoded blob (a JWT, a Basic header, a base64 JSON document), the run of characters that
// encodes v alone at each of the three byte alignments; and JSON string escapes (the
// minimum, "\/", HTML-safe \u003c-style, ASCII-only \uXXXX, hex in either case).
//
// The base64 runs leave out the at most two bytes at each end of v that share a group with the
// surrounding bytes: a few bits of the value's ends stay visible, never the value. Line-wrapped
// base64 (MIME) and other encodings are not recognised.
func echoForms(v string) []string {
	forms := []string{v}
	add := func(f string) {
		if len(f) >= minSecret && !slices.Contains(forms, f) {
			forms = append(forms, f)
		}
	}
	escaped := []string{url.PathEscape(v)}
	for _, e := range urlEncoders {
		escaped = append(escaped, escapeURL(v, e.keep, e.plus))
	}
	for _, e := range escaped {
		twice := url.QueryEscape(e)
		add(e)
		add(lowerEscapes(e))
		add(twice)
		add(lowerEscapes(twice))
	}
	h := hex.EncodeToString([]byte(v))
	add(h)
	add(strings.ToUpper(h))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		add(enc.EncodeToString([]byte(v)))
		raw := enc.WithPadding(base64.NoPadding)
		add(raw.EncodeToString([]byte(v)))
		for k := range 3 {
			b := []byte(v[k:])
			add(raw.EncodeToString(b[:len(b)/3*3]))
		}
	}
	// JSON writers differ in which characters they write as \uXXXX (Go: < > &; Gson: < > & = ';
	// .NET: + and more; PHP's JSON_HEX_*: < > & ' "): every subset of the value's punctuation
	// that such a writer may escape, in each style, and every character escaped.
	cands := jsonEscapable(v)
	for set := range 1 << len(cands) {
		escaped := func(r rune) bool {
			for i, c := range cands {
				if c == r {
					return set&(1<<i) != 0
				}
			}
			return false
		}
		for style := range jsonAll + 1 {
			add(jsonEscape(v, style, escaped))
		}
	}
	every := func(rune) bool { return true }
	add(jsonEscape(v, 0, every))
	add(jsonEscape(v, jsonUpper, every))
	return forms
}

// urlEncoders are the sets of bytes (besides letters and digits) that common URL encoders
// leave as they are, and whether they write a space as "+". Each gives a form of the value.
var urlEncoders = []struct {
	keep string
	plus bool
}{
	{"-._~", false},                       // every reserved byte: RFC 3986, PHP rawurlencode
	{"-._~!'()*", false},                  // JavaScript encodeURIComponent
	{"-._~/", false},                      // Python quote (safe="/" by default), Ruby URI::DEFAULT_PARSER
	{"-._~:@", false},                     // Python quote(safe=":@")
	{"-._~/:@", false},                    // Python quote(safe="/:@")
	{"-._~!$&'()*+,;=:@", false},          // an RFC 3986 path segment (pchar)
	{"-._~!$&'()*+,;=:@/", false},         // an RFC 3986 path
	{"-._~!$&'()*+,;=:@/?#", false},       // JavaScript encodeURI
	{printableExcept("\"#<>?`{}"), false}, // WHATWG URL path (new URL(), browsers)
	{printableExcept("\"#<>'"), false},    // WHATWG URL query
	{printableExcept("\"<>`"), false},     // WHATWG URL fragment
	{"-._~", true},                        // Go url.QueryEscape, Python quote_plus
	{"-._*", true},                        // form encoding: WHATWG URLSearchParams, Java URLEncoder
	{"-._", true},                         // PHP urlencode
}

// printableExcept is every printable ASCII byte but those of s.
func printableExcept(s string) string {
	var b []byte
	for c := byte('!'); c <= '~'; c++ {
		if strings.IndexByte(s, c) < 0 {
			b = append(b, c)
		}
	}
	return string(b)
}

// escapeURL percent-encodes every byte of s but letters, digits and keep; with plus, a space
// is written "+".
func escapeURL(s, keep string, plus bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(keep, c) >= 0:
			b.WriteByte(c)
		case c == ' ' && plus:
			b.WriteByte('+')
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		}
	}
	return b.String()
}

// lowerEscapes writes the hex digits of every %XX escape of s in lowercase.
func lowerEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = lowerHex(b[i+1]), lowerHex(b[i+2])
		}
	}
	return string(b)
}

func lowerHex(c byte) byte {
	if 'A' <= c && c <= 'F' {
		return c + 'a' - 'A'
	}
	return c
}

// JSON escaping styles, combined as bits.
const (
	jsonSlash = 1 << iota // "/" as "\/" (PHP, some Java encoders)
	jsonASCII             // every non-ASCII rune as \uXXXX, surrogate pairs above U+FFFF (Python's default)
	jsonUpper             // \u00XX with uppercase hex digits
	jsonAll   = jsonSlash | jsonASCII | jsonUpper
)

// jsonEscapeFirst are the characters JSON writers escape as \uXXXX by choice, most common first;
// maxJSONEscapable bounds how many of a value's are combined (2^n subsets each).
const (
	jsonEscapeFirst  = "=+<>&'\"/\\\u2028\u2029"
	maxJSONEscapable = 6
)

// jsonEscapable returns the distinct characters of v that a JSON writer may write as \uXXXX
// although it need not: ASCII punctuation (" and \ are escaped anyway, as \" and \\ or as
// \u0022 and \u005c), U+2028 and U+2029. Past maxJSONEscapable, the most commonly escaped ones.
func jsonEscapable(v string) []rune {
	var out []rune
	for _, r := range v {
		if (r > ' ' && r < utf8.RuneSelf && !unicode.IsLetter(r) && !unicode.IsDigit(r) ||
			r == '\u2028' || r == '\u2029') && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	if len(out) > maxJSONEscapable {
		var first []rune
		for _, r := range jsonEscapeFirst {
			if slices.Contains(out, r) && len(first) < maxJSONEscapable {
				first = append(first, r)
			}
		}
		out = first
	}
	return out
}

// jsonEscape is s as the inside of a JSON string, escaped in the given style, with the characters
// escaped reports written as \uXXXX.
func jsonEscape(s string, style int, escaped func(rune) bool) string {
	digits := "0123456789abcdef"
	if style&jsonUpper != 0 {
		digits = "0123456789ABCDEF"
	}
	var b strings.Builder
	u := func(r rune) {
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(digits[r>>shift&15])
		}
	}
	for _, r := range s {
		switch {
		case escaped(r) && r <= 0xffff:
			u(r)
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			u(r)
		case r == '/' && style&jsonSlash != 0:
			b.WriteString(`\/`)
		case r >= utf8.RuneSelf && style&jsonASCII != 0:
			if r > 0xffff {
				r -= 0x10000
				u(0xd800 + r>>10)
				u(0xdc00 + r&0x3ff)
				continue
			}
			u(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
