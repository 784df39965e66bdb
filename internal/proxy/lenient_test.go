package proxy

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/mandate-dev/mandate/internal/decimal"
	"golang.org/x/text/unicode/norm"
)

// lenientRead returns every value an upstream that reads JSON leniently could take for pointer
// in body (parsed as encoding/json does, the last of two equal names winning). Such an upstream
// normalises member names (NFKC, invisible characters dropped, any case), merges the members of
// __proto__ objects into their object and those of constructor.prototype objects into every
// object (Object.assign, lodash merge), reads an object where "*" wants an array both as a
// one-element array (Array.wrap, [].concat) and as its members' values (PHP foreach,
// Object.values), flattens nested arrays, reads a member of an array as that member of each
// element, and reads an object or array at the end as every value inside it.
func lenientRead(body []byte, pointer string) []any {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if dec.Decode(&doc) != nil || !strings.HasPrefix(pointer, "/") {
		return nil
	}
	l := lenient{global: map[string][]any{}}
	l.collectPrototypes(doc)
	cur := []any{doc}
	for _, tok := range strings.Split(pointer[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		var next []any
		for _, c := range cur {
			next = append(next, l.get(c, tok)...)
		}
		cur = next
	}
	var out []any
	for _, c := range cur {
		out = l.values(out, c, true)
	}
	return out
}

type lenient struct {
	global map[string][]any // members every object inherits through constructor.prototype
}

// lenientKey is a member name as a normalising upstream reads it.
func lenientKey(k string) string {
	k = strings.Map(func(r rune) rune {
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) || r != ' ' && unicode.Is(unicode.Zs, r) {
			return -1
		}
		return r
	}, norm.NFKC.String(k))
	return foldKey(k)
}

// members returns an object's members by lenient name, with those of its __proto__ objects.
func (l lenient) members(o map[string]any) map[string][]any {
	m := map[string][]any{}
	for k, v := range o {
		k = lenientKey(k)
		if p, ok := v.(map[string]any); ok && k == lenientKey("__proto__") {
			for pk, pv := range l.members(p) {
				m[pk] = append(m[pk], pv...)
			}
		}
		m[k] = append(m[k], v)
	}
	return m
}

func (l lenient) collectPrototypes(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range l.members(v) {
			if k != lenientKey("constructor") {
				continue
			}
			for _, c := range x {
				if c, ok := c.(map[string]any); ok {
					for _, p := range l.members(c)[lenientKey("prototype")] {
						if p, ok := p.(map[string]any); ok {
							for pk, pv := range l.members(p) {
								l.global[pk] = append(l.global[pk], pv...)
							}
						}
					}
				}
			}
		}
		for _, x := range v {
			l.collectPrototypes(x)
		}
	case []any:
		for _, x := range v {
			l.collectPrototypes(x)
		}
	}
}

func (l lenient) get(v any, tok string) []any {
	switch v := v.(type) {
	case map[string]any:
		m := l.members(v)
		if tok == "*" {
			out := []any{v}
			for _, xs := range m {
				out = append(out, xs...)
			}
			return out
		}
		k := lenientKey(tok)
		return append(append([]any(nil), m[k]...), l.global[k]...)
	case []any:
		var out []any
		for _, x := range l.values(nil, v, false) {
			if tok == "*" {
				out = append(out, x)
			} else {
				out = append(out, l.get(x, tok)...)
			}
		}
		if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(v) {
			out = append(out, v[i])
		}
		return out
	}
	return nil
}

// values appends what v holds: the elements of arrays, nested arrays flattened, and with
// intoObjects the values of objects' members too; nulls are nothing.
func (l lenient) values(out []any, v any, intoObjects bool) []any {
	switch v := v.(type) {
	case nil:
	case []any:
		for _, x := range v {
			out = l.values(out, x, intoObjects)
		}
	case map[string]any:
		if !intoObjects {
			return append(out, v)
		}
		for _, x := range v { // __proto__'s members are reached through __proto__ itself
			out = l.values(out, x, true)
		}
	default:
		out = append(out, v)
	}
	return out
}

// lenientDomains returns every domain an upstream could read in s: after NFKC normalisation
// (a full-width comma is a comma), after each "@", both the run of hostname characters and
// the text up to a space, comma, semicolon, quote, bracket or parenthesis (splitting on
// Unicode spaces), lower-cased and without a trailing dot.
func lenientDomains(s string) []string {
	t := norm.NFKC.String(s)
	var out []string
	for i := strings.IndexByte(t, '@'); i >= 0; i = strings.IndexByte(t, '@') {
		t = t[i+1:]
		run := strings.IndexFunc(t, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '-')
		})
		word := strings.IndexFunc(t, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune(",;<>\"()[]", r) })
		for _, end := range []int{run, word} {
			if end < 0 {
				end = len(t)
			}
			out = append(out, strings.TrimSuffix(strings.ToLower(t[:end]), "."))
		}
	}
	return out
}

var label = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// inGrant reports whether d is a hostname the test grant ["example.com", "*.corp.example"] allows.
func inGrant(d string) bool {
	if d == "example.com" {
		return true
	}
	if !strings.HasSuffix(d, ".corp.example") || len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if !label.MatchString(l) {
			return false
		}
	}
	return true
}

// overMax returns the amounts a lenient upstream reads at /items/*/amount in body (numbers, and
// strings it would parse as numbers) that exceed the test grant's max_amount of 100.
func overMax(body []byte) []string {
	limit, _ := decimal.Parse("100")
	var over []string
	for _, v := range lenientRead(body, "/items/*/amount") {
		var n string
		switch v := v.(type) {
		case json.Number:
			n = string(v)
		case string:
			n = strings.TrimSpace(v)
		}
		if x, err := decimal.Parse(n); err == nil && decimal.Cmp(x, limit) > 0 {
			over = append(over, n)
		}
	}
	return over
}
