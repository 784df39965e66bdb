package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/mail"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mandate-dev/mandate/internal/vault"
)

// Body rule match kinds (see docs/proxy.md).
const (
	MatchEquals      = "equals"
	MatchEmailDomain = "email_domain"
	MatchPrefix      = "prefix"
	MatchMax         = "max"
)

// maxJSONDepth bounds the nesting of a body checked by rules.
const maxJSONDepth = 64

// jsonObject is a parsed JSON object keyed by folded names (see foldKey): no two members of an
// object may fold to the same key, so a lookup can never pick a different member than a
// case-insensitive decoder upstream would.
type jsonObject map[string]any

// parseStrictJSON parses one JSON value. Numbers stay json.Number. It refuses what two parsers
// could read differently: invalid UTF-8, duplicate member names (also differing only in case),
// nesting deeper than maxJSONDepth and anything after the value.
func parseStrictJSON(b []byte) (any, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("the body has data after its JSON value")
	}
	return v, nil
}

func parseValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("the body is nested deeper than %d", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, errors.New("the body is not a JSON document")
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := jsonObject{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, errors.New("the body is not a JSON document")
				}
				k, _ := kt.(string)
				fk := foldKey(k)
				if _, dup := obj[fk]; dup {
					return nil, errors.New("the body has a member name twice (or twice up to case)")
				}
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj[fk] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, errors.New("the body is not a JSON document")
			}
			return obj, nil
		case '[':
			var arr []any
			for dec.More() {
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, errors.New("the body is not a JSON document")
			}
			if arr == nil {
				arr = []any{}
			}
			return arr, nil
		}
		return nil, errors.New("the body is not a JSON document")
	default:
		return t, nil // string, json.Number, bool or nil
	}
}

// foldKey maps a member name to a key that two names share exactly when strings.EqualFold
// holds (simple Unicode case folding, which encoding/json uses to match struct fields).
func foldKey(s string) string {
	// For ASCII the representative is the upper-case letter ('k' and 's' fold with U+212A and
	// U+017F too, but those are larger), so names without lower-case ASCII letters or
	// non-ASCII bytes are their own key.
	fast := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || 'a' <= c && c <= 'z' {
			fast = false
			break
		}
	}
	if fast {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		// The smallest rune of r's fold orbit represents the orbit.
		min := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < min {
				min = f
			}
		}
		b.WriteRune(min)
	}
	return b.String()
}

// pointerValues returns every value at the RFC 6901 pointer in v: member names match as
// foldKey does, "*" selects every element of an array, and an array found at the end of the
// pointer contributes each of its elements. Absent members and nulls contribute nothing.
func pointerValues(v any, pointer string) ([]any, error) {
	if pointer == "" {
		return flatten(nil, v), nil
	}
	if pointer[0] != '/' {
		return nil, errors.New("a pointer must start with /")
	}
	cur := []any{v}
	for _, tok := range strings.Split(pointer[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		var next []any
		for _, c := range cur {
			switch c := c.(type) {
			case jsonObject:
				if x, ok := c[foldKey(tok)]; ok {
					next = append(next, x)
				}
			case []any:
				if tok == "*" {
					next = append(next, c...)
					break
				}
				if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(c) && strconv.Itoa(i) == tok {
					next = append(next, c[i])
				}
			}
		}
		cur = next
	}
	var out []any
	for _, c := range cur {
		out = flatten(out, c)
	}
	return out, nil
}

func flatten(out []any, v any) []any {
	switch v := v.(type) {
	case nil:
		return out
	case []any:
		for _, x := range v {
			if x != nil {
				out = append(out, x)
			}
		}
		return out
	}
	return append(out, v)
}

// bodyDenial is why a body falls outside the authorization_details.
type bodyDenial struct {
	status int
	reason string
	desc   string
}

// detailsOfType returns the caller's authorization_details objects whose type is name.
func detailsOfType(raw []json.RawMessage, name string) []map[string]any {
	var out []map[string]any
	for _, r := range raw {
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.UseNumber()
		var m map[string]any
		if dec.Decode(&m) != nil {
			continue
		}
		if t, _ := m["type"].(string); t == name {
			out = append(out, m)
		}
	}
	return out
}

// checkBody checks a JSON body against rules for the caller's details (objects of the
// upstream's type). The body passes when, for at least one detail, every rule whose Detail field
// the object has is met by every value at the rule's pointer (RFC 9396: each object is a
// separate grant of authority).
func checkBody(rules []vault.BodyRule, details []map[string]any, body []byte) *bodyDenial {
	var doc any
	if len(bytes.TrimSpace(body)) > 0 {
		var err error
		if doc, err = parseStrictJSON(body); err != nil {
			return &bodyDenial{status: 400, reason: reasonBodyInvalid, desc: err.Error() + ": this route's body is checked against your authorization_details"}
		}
		if _, ok := doc.(jsonObject); !ok {
			return &bodyDenial{status: 400, reason: reasonBodyInvalid, desc: "this route's body is checked against your authorization_details: send a JSON object"}
		}
	}
	var first *bodyDenial
	for _, d := range details {
		fail := checkDetail(rules, d, doc)
		if fail == nil {
			return nil
		}
		if first == nil {
			first = fail
		}
	}
	return first
}

func checkDetail(rules []vault.BodyRule, detail map[string]any, doc any) *bodyDenial {
	for _, rule := range rules {
		want, ok := detail[rule.Detail]
		if !ok {
			continue // the detail does not constrain this field
		}
		values, err := pointerValues(doc, rule.Pointer)
		if err != nil {
			return &bodyDenial{status: 403, reason: reasonBodyRule, desc: fmt.Sprintf("the route's body rule for %s has an invalid pointer", rule.Detail)}
		}
		for _, v := range values {
			if !matchValue(rule.Match, v, want) {
				return &bodyDenial{status: 403, reason: reasonBodyRule,
					desc: fmt.Sprintf("the body's %s is outside your authorization_details (%s must match %s by %s)", rule.Pointer, rule.Pointer, rule.Detail, rule.Match)}
			}
		}
	}
	return nil
}

// list returns want as a list: an array's elements, or want itself.
func list(want any) []any {
	if a, ok := want.([]any); ok {
		return a
	}
	return []any{want}
}

func matchValue(kind string, v, want any) bool {
	switch kind {
	case MatchEquals:
		for _, w := range list(want) {
			if scalarEqual(v, w) {
				return true
			}
		}
	case MatchEmailDomain:
		s, ok := v.(string)
		if !ok {
			return false
		}
		domain, ok := emailDomain(s)
		if !ok {
			return false
		}
		for _, w := range list(want) {
			if d, ok := w.(string); ok && domainMatches(domain, d) {
				return true
			}
		}
	case MatchPrefix:
		s, ok := v.(string)
		if !ok {
			return false
		}
		for _, w := range list(want) {
			if p, ok := w.(string); ok && p != "" && strings.HasPrefix(s, p) {
				return true
			}
		}
	case MatchMax:
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		m, ok := want.(json.Number)
		if !ok {
			return false
		}
		x, ok1 := parseNumber(string(n))
		y, ok2 := parseNumber(string(m))
		return ok1 && ok2 && x.Cmp(y) <= 0
	}
	return false // unknown kinds fail closed
}

func scalarEqual(v, w any) bool {
	switch v := v.(type) {
	case string:
		s, ok := w.(string)
		return ok && s == v
	case bool:
		b, ok := w.(bool)
		return ok && b == v
	case json.Number:
		n, ok := w.(json.Number)
		if !ok {
			return false
		}
		x, ok1 := parseNumber(string(v))
		y, ok2 := parseNumber(string(n))
		return ok1 && ok2 && x.Cmp(y) == 0
	}
	return false // objects and arrays never equal a listed value
}

// parseNumber reads a JSON number exactly. Exponents beyond ±400 are refused rather than
// expanded (no JSON API means them, and big.Rat would build them digit by digit).
func parseNumber(s string) (*big.Rat, bool) {
	if len(s) > 100 {
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || e > 400 || e < -400 {
			return nil, false
		}
	}
	r, ok := new(big.Rat).SetString(s)
	return r, ok
}

// emailDomain returns the lower-cased domain of one address ("a@b.example" or
// "Name <a@b.example>"). Lists of addresses in one string are refused.
func emailDomain(s string) (string, bool) {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", false
	}
	i := strings.LastIndexByte(a.Address, '@')
	if i < 0 || i == len(a.Address)-1 {
		return "", false
	}
	d := strings.ToLower(strings.TrimSuffix(a.Address[i+1:], "."))
	if d == "" || strings.ContainsAny(d, "[]") {
		return "", false // address literals are not domains
	}
	return d, true
}

// domainMatches reports whether domain is allowed by pattern: the same domain, or for
// "*.example.com" any subdomain of example.com (not example.com itself).
func domainMatches(domain, pattern string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		return rest != "" && strings.HasSuffix(domain, "."+rest)
	}
	return pattern != "" && domain == pattern
}
