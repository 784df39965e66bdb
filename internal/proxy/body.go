package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/decimal"
	"github.com/mandate-dev/mandate/internal/glob"
	"github.com/mandate-dev/mandate/internal/vault"
	"golang.org/x/text/unicode/norm"
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
// member names an upstream could read as another name (see plainText) or merge into an
// object's prototype (see prototypeKey), nesting deeper than maxJSONDepth and anything after
// the value.
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
				if !plainText(k) {
					return nil, errors.New("the body has a member name with a control, invisible or compatibility character (such as U+200B or a full-width letter), which an upstream may drop or normalise into another name: spell member names in plain characters")
				}
				fk := foldKey(k)
				if _, dup := obj[fk]; dup {
					return nil, errors.New("the body has a member name twice (or twice up to case)")
				}
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				if prototypeKey(fk, v) {
					return nil, errors.New("the body has a member __proto__, or constructor or prototype holding an object or array, which JavaScript upstreams merge into every object: rename it")
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

// plainText reports whether s reads the same to every upstream: it has no control (Cc),
// format (Cf, such as U+200B), line or paragraph separator character, no space other than
// U+0020, and Unicode NFKC normalisation leaves it as it is (full-width "ｔｏ" would become "to",
// U+FF0C a comma). Upstreams that trim, split on Unicode spaces or normalise would read
// something else than was checked.
func plainText(s string) bool {
	ascii := true
	for _, r := range s {
		if r >= utf8.RuneSelf {
			ascii = false
		}
		if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) || r != ' ' && unicode.Is(unicode.Zs, r) {
			return false
		}
	}
	return ascii || norm.NFKC.IsNormalString(s)
}

// prototypeKey reports whether a member (its folded name fk, its value v) would reach an
// object's prototype in a JavaScript upstream that merges or deep-merges the body
// (Object.assign, lodash merge): __proto__ with any value, constructor or prototype holding
// an object or array. Names are compared up to case, as every member name is.
func prototypeKey(fk string, v any) bool {
	switch fk {
	case foldKey("__proto__"):
		return true
	case foldKey("constructor"), foldKey("prototype"):
		switch v.(type) {
		case jsonObject, []any:
			return true
		}
	}
	return false
}

// errPointerSyntax is a route's pointer that is not an RFC 6901 pointer.
var errPointerSyntax = errors.New("a pointer must be empty or start with /")

// pointerValues returns every value at the RFC 6901 pointer in v: member names match as
// foldKey does, "*" selects every element of an array, a token of digits without a leading zero
// selects one element of an array (RFC 6901) or a member of an object, and an array found at the
// end of the pointer contributes each of its elements. Absent members, elements past the end and
// nulls contribute nothing. Any other value on the way is an error that names it: an upstream
// that reads leniently would find values in it that were not checked (an object read as a
// one-element array or for its members' values, a nested array flattened, a string parsed).
func pointerValues(v any, pointer string) ([]any, error) {
	if pointer == "" {
		return flatten(nil, v), nil
	}
	if pointer[0] != '/' {
		return nil, errPointerSyntax
	}
	toks := strings.Split(pointer[1:], "/")
	cur := []any{v}
	for n, raw := range toks {
		tok := strings.ReplaceAll(strings.ReplaceAll(raw, "~1", "/"), "~0", "~")
		index, isIndex := arrayIndex(tok)
		var next []any
		for _, c := range cur {
			switch c := c.(type) {
			case nil:
			case jsonObject:
				if tok == "*" {
					return nil, shapeError(toks[:n], pointer, "an object", "an array")
				}
				if x, ok := c[foldKey(tok)]; ok {
					next = append(next, x)
				}
			case []any:
				switch {
				case tok == "*":
					next = append(next, c...)
				case isIndex:
					if index < len(c) {
						next = append(next, c[index])
					}
				default:
					return nil, shapeError(toks[:n], pointer, "an array", "an object")
				}
			default:
				want := "an object"
				switch {
				case tok == "*":
					want = "an array"
				case isIndex:
					want = "an array or object"
				}
				return nil, shapeError(toks[:n], pointer, kindOf(c), want)
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

// arrayIndex reads an RFC 6901 array index: "0" or digits without a leading zero. An index too
// large for an int is past the end of every array.
func arrayIndex(tok string) (int, bool) {
	if tok == "" || len(tok) > 1 && tok[0] == '0' || strings.Trim(tok, "0123456789") != "" {
		return 0, false
	}
	i, err := strconv.Atoi(tok)
	if err != nil {
		return int(^uint(0) >> 1), true
	}
	return i, true
}

// shapeError says which value on the way to pointer had the wrong type. prefix are the
// pointer's tokens before it (as written in the rule, so no body value is quoted).
func shapeError(prefix []string, pointer, found, want string) error {
	at := "the body"
	if len(prefix) > 0 {
		at = "the body's /" + strings.Join(prefix, "/")
	}
	return fmt.Errorf("%s is %s where the pointer %s expects %s: an upstream could read values in it that were not checked against your authorization_details; send %s there, or leave it out", at, found, pointer, want, want)
}

func kindOf(v any) string {
	switch v.(type) {
	case jsonObject:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
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

// maxMatchSteps bounds the work of checking one body (glob.Cost summed over every value and
// pattern compared): about 0.1 s. Past it the body is refused, never let through.
const maxMatchSteps = 1 << 26

// checkBody checks a JSON body against rules for the caller's details (objects of the
// upstream's type). The body passes when, for at least one detail, every rule whose Detail field
// the object has is met by every value at the rule's pointer (RFC 9396: each object is a
// separate grant of authority).
func checkBody(rules []vault.BodyRule, details []map[string]any, body []byte) *bodyDenial {
	var doc any
	if len(bytes.TrimSpace(body)) > 0 {
		if err := checkEncoding(body); err != nil {
			return &bodyDenial{status: 400, reason: reasonBodyInvalid, desc: err.Error()}
		}
		var err error
		if doc, err = parseStrictJSON(body); err != nil {
			return &bodyDenial{status: 400, reason: reasonBodyInvalid, desc: err.Error() + ": this route's body is checked against your authorization_details"}
		}
		obj, ok := doc.(jsonObject)
		if !ok {
			return &bodyDenial{status: 400, reason: reasonBodyInvalid, desc: "this route's body is checked against your authorization_details: send a JSON object"}
		}
		if f := fieldMisspelt(obj, ruleFields(rules)); f != "" {
			return &bodyDenial{status: 403, reason: reasonBodyRule, desc: fmt.Sprintf("%s is checked in the body against your authorization_details: a member whose name frameworks may read as it (padded, percent-encoded, with brackets or dots) may not be sent; name it exactly", apperr.Clip(f, 40))}
		}
	}
	m := &matcher{}
	var first *bodyDenial
	for _, d := range details {
		fail := m.checkDetail(rules, d, doc)
		if fail == nil {
			return nil
		}
		if first == nil {
			first = fail
		}
	}
	if m.steps > maxMatchSteps {
		return &bodyDenial{status: 403, reason: reasonBodyRule,
			desc: "the body has too many or too long values to check against your authorization_details: send fewer values per call"}
	}
	return first
}

// matcher matches body values against detail values within a budget of steps.
type matcher struct{ steps int }

func (m *matcher) checkDetail(rules []vault.BodyRule, detail map[string]any, doc any) *bodyDenial {
	for _, rule := range rules {
		want, ok := detail[rule.Detail]
		if !ok {
			continue // the detail does not constrain this field
		}
		values, err := pointerValues(doc, rule.Pointer)
		if errors.Is(err, errPointerSyntax) {
			return &bodyDenial{status: 403, reason: reasonBodyRule, desc: fmt.Sprintf("the route's body rule for %s has an invalid pointer", rule.Detail)}
		}
		if err != nil {
			return &bodyDenial{status: 403, reason: reasonBodyRule, desc: err.Error()}
		}
		for _, v := range values {
			if !m.matchValue(rule.Match, v, want) {
				desc := fmt.Sprintf("the body's %s is outside your authorization_details (%s must match %s by %s)", rule.Pointer, rule.Pointer, rule.Detail, rule.Match)
				if rule.Match == MatchEquals && hasNumber(want) {
					desc += "; a number in authorization_details is an upper bound (a narrowed token may lower it), so equals never matches it: the detail should list strings, or the route use max"
				}
				return &bodyDenial{status: 403, reason: reasonBodyRule, desc: desc}
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

func hasNumber(want any) bool {
	for _, w := range list(want) {
		if _, ok := w.(json.Number); ok {
			return true
		}
	}
	return false
}

// matchValue reports whether body value v is allowed by the detail's value want under kind.
// Detail strings are glob patterns (internal/glob), as in narrowing, and every kind is monotone
// in the covering rule of docs/delegation.md: whatever a narrowed detail allows, the detail it
// was narrowed from allows too. That is why a number in a detail only bounds (max) and never
// pins (equals): narrowing lets a child lower it.
func (m *matcher) matchValue(kind string, v, want any) bool {
	switch kind {
	case MatchEquals:
		for _, w := range list(want) {
			switch w := w.(type) {
			case string:
				if s, ok := v.(string); ok && m.glob(w, s, false) {
					return true
				}
			case bool:
				if b, ok := v.(bool); ok && b == w {
					return true
				}
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
			// Lower-casing pattern and domain alike keeps the match monotone: a pattern that
			// covers another still does after both are lower-cased.
			if p, ok := w.(string); ok && m.glob(strings.ToLower(p), domain, false) {
				return true
			}
		}
	case MatchPrefix:
		s, ok := v.(string)
		if !ok {
			return false
		}
		for _, w := range list(want) {
			if p, ok := w.(string); ok && p != "" && m.glob(p, s, true) {
				return true
			}
		}
	case MatchMax:
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		w, ok := want.(json.Number)
		if !ok {
			return false
		}
		x, err1 := decimal.Parse(string(n))
		y, err2 := decimal.Parse(string(w))
		return err1 == nil && err2 == nil && decimal.Cmp(x, y) <= 0
	}
	return false // unknown kinds fail closed
}

// glob matches s against pattern (entirely, or a prefix of s) within the budget.
func (m *matcher) glob(pattern, s string, prefix bool) bool {
	if m.steps += glob.Cost(pattern, s); m.steps > maxMatchSteps {
		return false
	}
	if prefix {
		return glob.MatchPrefix(pattern, s)
	}
	return glob.Match(pattern, s)
}

// emailDomain returns the lower-cased domain of one address ("a@b.example" or
// "Name <a@b.example>"), without a trailing dot. It refuses whatever an upstream could read as
// another address or another domain: a string with more or less than one "@" (lists, quoted
// "@"s, display names with addresses), other forms of RFC 5322 (quoted local parts, comments,
// encoded display names with an "@"), text that is not plainText (an upstream splitting on
// Unicode spaces or normalising commas), and a domain that is not a DNS hostname (isHostname).
func emailDomain(s string) (string, bool) {
	if strings.Count(s, "@") != 1 || !plainText(s) {
		return "", false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || s != a.Address && !strings.HasSuffix(s, "<"+a.Address+">") {
		return "", false
	}
	if strings.Contains(a.Name, "@") || !plainText(a.Name) {
		return "", false
	}
	i := strings.LastIndexByte(a.Address, '@')
	d := strings.ToLower(a.Address[i+1:]) // mail.ParseAddress refuses a trailing dot
	if !isHostname(d) {
		return "", false
	}
	return d, true
}

// isHostname reports whether d is a DNS hostname: dot-separated labels of 1 to 63 ASCII letters,
// digits and hyphens (punycode "xn--" labels are such), none starting or ending with "-", 253
// bytes at most, the last label not all digits (an IPv4 address is not a domain).
func isHostname(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

// The request around a checked body: the upstream must parse exactly the JSON that was checked,
// so every header that changes how a body is read is checked too, and a field a rule checks may
// not also arrive by another way (the query, path parameters) that a framework would merge in.

// jsonMediaType reads the request's Content-Type for a checked body: "" when there is none,
// else its one media type, lower-cased: application/json or application/…+json, without
// parameters other than charset=utf-8. It is what the upstream receives as the only
// Content-Type, so no other reading of the header can reach it.
func jsonMediaType(h http.Header) (string, *refusal) {
	vals := h.Values("Content-Type")
	if len(vals) == 0 {
		return "", nil
	}
	ctRefusal := func(desc string) (string, *refusal) {
		return "", refuse(http.StatusUnsupportedMediaType, "invalid_request", reasonBodyContentType,
			"this route's body is checked against your authorization_details: "+desc)
	}
	if len(vals) > 1 || strings.Contains(vals[0], ",") {
		return ctRefusal("send one Content-Type header with one media type, application/json")
	}
	mt, params, err := mime.ParseMediaType(vals[0])
	if err != nil {
		return ctRefusal("the Content-Type is not a valid media type: send application/json")
	}
	if mt != "application/json" && !(strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
		return ctRefusal("send it as application/json")
	}
	for k, v := range params {
		if k != "charset" {
			return ctRefusal(fmt.Sprintf("send Content-Type %s without the %q parameter", mt, apperr.Clip(k, 40)))
		}
		if !strings.EqualFold(v, "utf-8") {
			return ctRefusal("the body is read as UTF-8 JSON: send it in UTF-8, with charset=utf-8 or no charset")
		}
	}
	return mt, nil
}

// identityOnly reports whether every Content-Encoding the request names is identity (or it
// names none): the body as sent is the body the upstream decodes.
func identityOnly(h http.Header) bool {
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return false
			}
		}
	}
	return true
}

// ruleFields are the top-level member names the rules check (the first token of each pointer),
// folded as body keys are.
func ruleFields(rules []vault.BodyRule) map[string]bool {
	fields := make(map[string]bool, len(rules))
	for _, rule := range rules {
		tok, _, _ := strings.Cut(strings.TrimPrefix(rule.Pointer, "/"), "/")
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		if rule.Pointer != "" {
			fields[foldKey(tok)] = true
		}
	}
	return fields
}

// paramField returns the field a parameter name stands for in some framework's reading, or ""
// when it names none of fields. The readings: the name percent-decoded (again while it still
// decodes: double encoding), "+" as a space, cut at a NUL, trimmed; compared up to case as body
// keys are; the name itself, the part before "[" (to[], to[0], to[x]: PHP, Rails, qs), the part
// before "." (to.0: qs with dots), and "." and spaces read as "_" (PHP's reply.to is reply_to).
func paramField(name string, fields map[string]bool) string {
	for range 3 {
		d, err := url.QueryUnescape(name)
		if err != nil || d == name {
			break
		}
		name = d
	}
	name, _, _ = strings.Cut(name, "\x00")
	name = strings.TrimSpace(name)
	bracket, _, _ := strings.Cut(name, "[")
	dot, _, _ := strings.Cut(name, ".")
	php := strings.NewReplacer(".", "_", " ", "_").Replace(bracket)
	for _, n := range [...]string{name, bracket, dot, php} {
		if n != "" && fields[foldKey(n)] {
			return n
		}
	}
	return ""
}

// fieldMisspelt returns a field a rule checks that a top-level member of the body names in
// another spelling (paramField): "to[]", " to" or "%74o" would slip past the rule for "to" in an
// upstream that reads member names as parameter names.
func fieldMisspelt(doc jsonObject, fields map[string]bool) string {
	for k := range doc {
		if fields[k] {
			continue // the field itself (keys are folded)
		}
		if f := paramField(k, fields); f != "" {
			return f
		}
	}
	return ""
}

// fieldOutsideBody returns a field a rule checks that the request also names outside its body:
// as a query parameter (separated by & or ;) or as a path parameter (/emails;to=…).
func fieldOutsideBody(rawQuery, path string, fields map[string]bool) string {
	params := strings.FieldsFunc(rawQuery, func(r rune) bool { return r == '&' || r == ';' })
	if strings.Contains(path, ";") {
		for _, seg := range strings.Split(path, "/") {
			if _, ps, ok := strings.Cut(seg, ";"); ok {
				params = append(params, strings.Split(ps, ";")...)
			}
		}
	}
	for _, param := range params {
		name, _, _ := strings.Cut(param, "=")
		if f := paramField(name, fields); f != "" {
			return f
		}
	}
	return ""
}

// checkEncoding refuses what a strict UTF-8 JSON parser accepts but other parsers read
// differently: a byte order mark or UTF-16/32 (a NUL byte), and escapes of NUL or of a lone
// surrogate, which parsers drop, keep, replace or cut a string at. In valid JSON the scan
// meets exactly its escapes; in anything else it is merely safe (the parse refuses it next).
func checkEncoding(b []byte) error {
	if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) || bytes.IndexByte(b, 0) >= 0 {
		return errors.New("the body has a byte order mark or is not UTF-8: send UTF-8 JSON without a byte order mark")
	}
	bad := errors.New(`the body has a \u0000 escape or an unpaired surrogate escape, which parsers read differently: send the text itself`)
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\\')
		if j < 0 {
			return nil
		}
		i += j
		if i+6 > len(b) || b[i+1] != 'u' {
			i += 2
			continue
		}
		r, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
		i += 6
		switch {
		case err != nil:
			// not an escape: the parse refuses it next
		case r == 0, 0xDC00 <= r && r < 0xE000:
			return bad
		case 0xD800 <= r && r < 0xDC00:
			if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
				return bad
			}
			if lo, _ := strconv.ParseUint(string(b[i+2:i+6]), 16, 32); lo < 0xDC00 || lo >= 0xE000 {
				return bad
			}
			i += 6
		}
	}
	return nil
}
