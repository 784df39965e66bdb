package delegation

// Narrowing rules: what a task or a sub-delegation may carry, given what its parent (grant, task
// or token) carries. Every function here is pure; the token endpoint calls them on every hop and
// never trusts a client's claim that a request is narrower. docs/delegation.md states the rules.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/decimal"
	"github.com/mandate-dev/mandate/internal/glob"
)

// Limits of an authorization_details parameter (RFC 9396).
const (
	MaxDetails      = 16       // objects in one authorization_details array
	MaxDetailsDepth = 8        // nested objects and arrays in one object, the object itself counted as 1
	MaxDetailsBytes = 16 << 10 // the whole parameter
)

// Values of NarrowError.Limit.
const (
	LimitScope    = "scope"
	LimitResource = "resource"
	LimitDetails  = "authorization_details"
	LimitBudget   = "budget"
)

const (
	clipLen = 80 // longest quoted value in an error message
	// maxSteps bounds the work of one coverage check (values compared plus glob steps), so a
	// pathological pair of large arrays cannot hold a request thread; past it the check refuses.
	maxSteps = 1 << 20
)

// NarrowError says which limit a request broke; the token endpoint maps Limit to an OAuth error
// (scope → invalid_scope, resource → invalid_target, authorization_details →
// invalid_authorization_details, budget → invalid_request). An error of another type from these
// functions means the parent itself is malformed: a server fault, not the client's.
type NarrowError struct {
	Limit string // LimitScope, LimitResource, LimitDetails or LimitBudget
	Msg   string // one sentence naming what exceeded what; quoted values clipped to ~80 characters
}

func (e *NarrowError) Error() string { return e.Msg }

func narrowErr(limit, format string, args ...any) *NarrowError {
	return &NarrowError{Limit: limit, Msg: fmt.Sprintf(format, args...)}
}

// clip shortens s to about clipLen characters for an error message.
func clip(s string) string {
	if len(s) <= clipLen {
		return s
	}
	return apperr.Clip(s, clipLen-3)
}

// list is a parent's values for an error message: space-separated, clipped.
func list(vals []string) string {
	if len(vals) == 0 {
		return "none"
	}
	return clip(strings.Join(vals, " "))
}

// dedup returns a new slice of vals without repeats, first occurrence kept.
func dedup(vals []string) []string {
	out := make([]string, 0, len(vals))
	seen := make(map[string]bool, len(vals))
	for _, v := range vals {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// ValidScopeToken reports whether s is a scope-token of RFC 6749 §3.3: 1*( %x21 / %x23-5B /
// %x5D-7E ).
func ValidScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// NarrowScopes returns the effective scopes of a child: requested when every one is in parent;
// parent itself when requested is empty. Duplicates are removed, order is as requested. Scope
// tokens are compared exactly (case-sensitive); a requested token that is not a valid RFC 6749
// §3.3 scope-token is refused.
func NarrowScopes(requested, parent []string) ([]string, error) {
	if len(requested) == 0 {
		return dedup(parent), nil
	}
	for _, s := range requested {
		if !ValidScopeToken(s) {
			return nil, narrowErr(LimitScope, "scope %q is not a valid scope token (RFC 6749 §3.3)", clip(s))
		}
		if !slices.Contains(parent, s) {
			return nil, narrowErr(LimitScope, "scope %q is not in the parent's scopes (%s)", clip(s), list(parent))
		}
	}
	return dedup(requested), nil
}

// defaultPorts are dropped from a resource's authority.
var defaultPorts = map[string]string{"http": "80", "https": "443", "ws": "80", "wss": "443"}

// NormalizeResource checks an RFC 8707 resource indicator (an absolute URI with no query and no
// fragment, §2) and returns it normalised: scheme and host lower-cased, the scheme's default port
// dropped, an empty path made "/". http(s) URIs need a host; no URI may carry user information.
// Its errors are *NarrowError with Limit "resource".
func NormalizeResource(uri string) (string, error) {
	u, err := url.Parse(uri)
	switch {
	case err != nil || !u.IsAbs():
		return "", narrowErr(LimitResource, "resource %q is not an absolute URI", clip(uri))
	case strings.Contains(uri, "#"):
		return "", narrowErr(LimitResource, "resource %q has a fragment, which RFC 8707 §2 does not allow", clip(uri))
	case u.RawQuery != "" || u.ForceQuery:
		return "", narrowErr(LimitResource, "resource %q has a query, which RFC 8707 §2 does not allow", clip(uri))
	case u.User != nil:
		return "", narrowErr(LimitResource, "resource %q has user information", clip(uri))
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Opaque != "" { // urn:…, mailto:…: nothing more to normalise
		return u.String(), nil
	}
	host := strings.ToLower(u.Host)
	if p, ok := defaultPorts[u.Scheme]; ok {
		host = strings.TrimSuffix(host, ":"+p)
	}
	host = strings.TrimSuffix(host, ":") // empty port
	if host == "" && (u.Scheme == "http" || u.Scheme == "https") {
		return "", narrowErr(LimitResource, "resource %q has no host", clip(uri))
	}
	u.Host = host
	if u.Host != "" && u.Path == "" {
		u.Path, u.RawPath = "/", ""
	}
	return u.String(), nil
}

// NarrowResources returns the effective RFC 8707 resources of a child, normalised (see
// NormalizeResource): requested when every one, normalised, equals a normalised parent resource;
// parent when requested is empty. Exact match only: no prefix matching. Duplicates are removed,
// order is as requested.
func NarrowResources(requested, parent []string) ([]string, error) {
	norm := make([]string, 0, len(parent))
	for _, p := range parent {
		n, err := NormalizeResource(p)
		if err != nil {
			return nil, fmt.Errorf("parent resource: %s", err)
		}
		norm = append(norm, n)
	}
	if len(requested) == 0 {
		return dedup(norm), nil
	}
	out := make([]string, 0, len(requested))
	for _, r := range requested {
		n, err := NormalizeResource(r)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(norm, n) {
			return nil, narrowErr(LimitResource, "resource %q is not in the parent's resources (%s)", clip(n), list(norm))
		}
		out = append(out, n)
	}
	return dedup(out), nil
}

// NarrowBudget returns the effective budget of a child: a requested key the parent has must not
// exceed the parent's value; a key the parent lacks (no limit there) may take any value; keys
// left out inherit the parent's value, so a child never drops a limit; an empty requested gives
// a copy of parent. Negative values are refused. Which keys are known is CheckBudget's concern.
// parentName names the parent's budget in an error: "the request's budget", "task tsk_…'s budget".
func NarrowBudget(requested, parent map[string]int64, parentName string) (map[string]int64, error) {
	out := make(map[string]int64, len(parent))
	for k, v := range parent {
		if v < 0 {
			return nil, fmt.Errorf("parent budget %q is negative (%d)", clip(k), v)
		}
		out[k] = v
	}
	for _, k := range sortedKeys(requested) { // the first error reported does not depend on map order
		v := requested[k]
		pv, ok := parent[k]
		switch {
		case v < 0:
			return nil, narrowErr(LimitBudget, "budget %q is negative (%d)", clip(k), v)
		case ok && v > pv:
			return nil, narrowErr(LimitBudget, "budget %q of %d exceeds %s (%d)", clip(k), v, parentName, pv)
		}
		out[k] = v
	}
	return out, nil
}

// ParseDetails validates an authorization_details parameter (RFC 9396 §2): a JSON array of at
// most MaxDetails objects, each with a non-empty string "type", no duplicate member names, at most
// MaxDetailsDepth levels of nesting (the object itself is level 1), MaxDetailsBytes in all, valid
// UTF-8. It returns the objects compacted. Its errors are *NarrowError with Limit
// "authorization_details".
func ParseDetails(raw string) ([]json.RawMessage, error) {
	if len(raw) > MaxDetailsBytes {
		return nil, narrowErr(LimitDetails, "authorization_details is %d bytes, more than the limit of %d", len(raw), MaxDetailsBytes)
	}
	if !utf8.ValidString(raw) {
		return nil, narrowErr(LimitDetails, "authorization_details is not valid UTF-8")
	}
	var items []json.RawMessage
	if !strings.HasPrefix(strings.TrimLeft(raw, " \t\r\n"), "[") || json.Unmarshal([]byte(raw), &items) != nil {
		return nil, narrowErr(LimitDetails, "authorization_details is not a JSON array")
	}
	if len(items) > MaxDetails {
		return nil, narrowErr(LimitDetails, "authorization_details has %d objects, more than the limit of %d", len(items), MaxDetails)
	}
	out := make([]json.RawMessage, 0, len(items))
	for i, it := range items {
		if _, err := decodeDetail(it); err != nil {
			return nil, narrowErr(LimitDetails, "authorization_details[%d] %s", i, err)
		}
		var b bytes.Buffer
		if err := json.Compact(&b, it); err != nil {
			return nil, narrowErr(LimitDetails, "authorization_details[%d] %s", i, err)
		}
		out = append(out, b.Bytes())
	}
	return out, nil
}

// NarrowDetails returns the effective RFC 9396 authorization_details of a child. An empty
// requested gives a copy of parent. Each requested object must be covered (see Covers) by a
// parent object of the same type; its effective object is the requested one with the fields it
// left out filled in from the first covering parent object, recursively (a field the child omits
// inherits the parent's constraint; it never becomes unconstrained). Effective objects are
// compact; identical ones are listed once.
func NarrowDetails(requested, parent []json.RawMessage) ([]json.RawMessage, error) {
	pnodes := make([]*node, 0, len(parent))
	for i, p := range parent {
		n, err := decodeDetail(p)
		if err != nil {
			return nil, fmt.Errorf("parent authorization_details[%d] %s", i, err)
		}
		pnodes = append(pnodes, n)
	}
	if len(requested) == 0 {
		out := make([]json.RawMessage, 0, len(parent))
		for _, p := range parent {
			out = append(out, bytes.Clone(p))
		}
		return out, nil
	}
	if len(requested) > MaxDetails {
		return nil, narrowErr(LimitDetails, "authorization_details has %d objects, more than the limit of %d", len(requested), MaxDetails)
	}
	out := make([]json.RawMessage, 0, len(requested))
	seen := make(map[string]bool, len(requested))
	requestedTypes := make(map[string]bool, len(requested))
	for i, r := range requested {
		c, err := decodeDetail(r)
		if err != nil {
			return nil, narrowErr(LimitDetails, "authorization_details[%d] %s", i, err)
		}
		typ := c.fields["type"].s
		reason := ""
		var eff *node
		for _, p := range pnodes {
			if p.fields["type"].s != typ {
				continue
			}
			ck := &checker{}
			why := ck.coverFields(p, c, "", true)
			if why == "" {
				if eff = ck.effective(p, c); eff != nil {
					break
				}
				why = tooComplex
			}
			if reason == "" {
				reason = why
			}
		}
		if eff == nil {
			if reason == "" {
				return nil, narrowErr(LimitDetails, "authorization_details[%d] has type %q, which the parent does not grant", i, clip(typ))
			}
			return nil, narrowErr(LimitDetails, "authorization_details[%d] of type %q is not covered by the parent's: %s", i, clip(typ), reason)
		}
		var b bytes.Buffer
		eff.encode(&b)
		if !seen[b.String()] {
			seen[b.String()] = true
			out = append(out, b.Bytes())
		}
		requestedTypes[typ] = true
	}
	// A type the request leaves out is inherited, as an omitted field is: details also constrain
	// (the proxy checks request bodies against them), so dropping one must never lift its limits.
	for i, p := range parent {
		if !requestedTypes[pnodes[i].fields["type"].s] {
			out = append(out, bytes.Clone(p))
		}
	}
	return out, nil
}

// Covers reports whether parent covers child, both one RFC 9396 authorization_details object,
// and the reason when not. Parent covers child when both are valid objects (as ParseDetails
// checks them) of the same "type" and every other field of child is present in parent and
// covered: strings equal, or the parent's contains "*" (any run of characters) and matches the
// child's entirely; numbers child ≤ parent (exact decimal comparison); booleans and null equal;
// arrays: every child element covered by some parent element; objects: the same field rule.
func Covers(parent, child json.RawMessage) (bool, string) {
	p, err := decodeDetail(parent)
	if err != nil {
		return false, "the parent " + err.Error()
	}
	c, err := decodeDetail(child)
	if err != nil {
		return false, "the child " + err.Error()
	}
	pt, ct := p.fields["type"].s, c.fields["type"].s
	if pt != ct {
		return false, fmt.Sprintf("type %q differs from the parent's %q", clip(ct), clip(pt))
	}
	ck := &checker{}
	if r := ck.coverFields(p, c, "", true); r != "" {
		return false, r
	}
	return true, ""
}

// kind is a JSON value's kind.
type kind uint8

const (
	kNull kind = iota
	kBool
	kNumber
	kString
	kArray
	kObject
)

var kindNames = [...]string{"null", "a boolean", "a number", "a string", "an array", "an object"}

// node is a decoded JSON value. Objects keep their member order.
type node struct {
	kind   kind
	b      bool
	s      string          // a string, or a number's literal
	num    decimal.Decimal // a number's value
	arr    []*node
	keys   []string
	fields map[string]*node
}

// decodeDetail decodes one authorization_details object strictly: valid UTF-8, one JSON object
// with a non-empty string "type", no duplicate member names, at most MaxDetailsDepth levels,
// numbers with an exponent within ±decimal.MaxExponent. The error reads after
// "authorization_details[i]".
func decodeDetail(raw []byte) (*node, error) {
	if !utf8.Valid(raw) {
		return nil, errors.New("is not valid UTF-8")
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	n, err := readValue(d, 1)
	var le limitError
	switch {
	case errors.As(err, &le):
		return nil, fmt.Errorf("is refused: %s", err)
	case err != nil:
		return nil, fmt.Errorf("is not valid JSON: %s", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("is not valid JSON: data after the value")
	}
	if n.kind != kObject {
		return nil, fmt.Errorf("is %s, not an object", kindNames[n.kind])
	}
	t, ok := n.fields["type"]
	if !ok || t.kind != kString || t.s == "" {
		return nil, errors.New(`has no "type" (a non-empty string)`)
	}
	return n, nil
}

// limitError is valid JSON that the rules refuse (depth, duplicate member, number range).
type limitError string

func (e limitError) Error() string { return string(e) }

// readValue reads one value; depth is its level if it is an object or array.
func readValue(d *json.Decoder, depth int) (*node, error) {
	tok, err := d.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	switch t := tok.(type) {
	case nil:
		return &node{kind: kNull}, nil
	case bool:
		return &node{kind: kBool, b: t}, nil
	case string:
		return &node{kind: kString, s: t}, nil
	case json.Number:
		num, err := decimal.Parse(string(t))
		switch {
		case errors.Is(err, decimal.ErrRange):
			return nil, limitError(fmt.Sprintf("number %q is out of range", clip(string(t))))
		case err != nil:
			return nil, fmt.Errorf("invalid number %q", clip(string(t)))
		}
		return &node{kind: kNumber, s: string(t), num: num}, nil
	case json.Delim:
		if depth > MaxDetailsDepth {
			return nil, limitError(fmt.Sprintf("nested more than %d levels deep", MaxDetailsDepth))
		}
		if t == '[' {
			n := &node{kind: kArray}
			for d.More() {
				e, err := readValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				n.arr = append(n.arr, e)
			}
			_, err := d.Token() // ]
			return n, err
		}
		n := &node{kind: kObject, fields: map[string]*node{}}
		for d.More() {
			kt, err := d.Token()
			if err != nil {
				return nil, err
			}
			k, _ := kt.(string)
			if _, dup := n.fields[k]; dup {
				return nil, limitError(fmt.Sprintf("duplicate member %q", clip(k)))
			}
			v, err := readValue(d, depth+1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k)
			n.fields[k] = v
		}
		_, err := d.Token() // }
		return n, err
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}

// encode writes n as compact JSON; numbers keep their literal, strings are not HTML-escaped.
func (n *node) encode(b *bytes.Buffer) {
	switch n.kind {
	case kNull:
		b.WriteString("null")
	case kBool:
		b.WriteString(strconv.FormatBool(n.b))
	case kNumber:
		b.WriteString(n.s)
	case kString:
		writeString(b, n.s)
	case kArray:
		b.WriteByte('[')
		for i, e := range n.arr {
			if i > 0 {
				b.WriteByte(',')
			}
			e.encode(b)
		}
		b.WriteByte(']')
	case kObject:
		b.WriteByte('{')
		for i, k := range n.keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			n.fields[k].encode(b)
		}
		b.WriteByte('}')
	}
}

func writeString(b *bytes.Buffer, s string) {
	var tmp bytes.Buffer
	e := json.NewEncoder(&tmp)
	e.SetEscapeHTML(false)
	_ = e.Encode(s) // a string always encodes
	b.Write(bytes.TrimSuffix(tmp.Bytes(), []byte("\n")))
}

// checker runs one coverage check within a budget of steps.
type checker struct{ steps int }

func (ck *checker) tick(n int) bool {
	ck.steps += n
	return ck.steps <= maxSteps
}

const tooComplex = "too complex to compare"

// coverFields applies the field rule: every field of c (but "type" at the top) is in p and
// covered. It returns "" when covered, else the reason.
func (ck *checker) coverFields(p, c *node, path string, top bool) string {
	for _, k := range c.keys {
		if top && k == "type" {
			continue
		}
		fp := joinPath(path, k)
		pv, ok := p.fields[k]
		if !ok {
			return "the parent does not grant " + fp
		}
		if r := ck.cover(pv, c.fields[k], fp); r != "" {
			return r
		}
	}
	return ""
}

// cover reports "" when parent value p covers child value c, else the reason.
func (ck *checker) cover(p, c *node, path string) string {
	if !ck.tick(1) {
		return tooComplex
	}
	if p.kind != c.kind {
		return fmt.Sprintf("%s is %s where the parent has %s", path, kindNames[c.kind], kindNames[p.kind])
	}
	switch c.kind {
	case kString:
		if !ck.matchString(p.s, c.s) {
			return fmt.Sprintf("%s %q is not covered by the parent's %q", path, clip(c.s), clip(p.s))
		}
	case kNumber:
		if decimal.Cmp(c.num, p.num) > 0 {
			return fmt.Sprintf("%s %s exceeds the parent's %s", path, clip(c.s), clip(p.s))
		}
	case kBool:
		if c.b != p.b {
			return fmt.Sprintf("%s %t differs from the parent's %t", path, c.b, p.b)
		}
	case kArray:
		return ck.coverArray(p, c, path)
	case kObject:
		return ck.coverFields(p, c, path, false)
	}
	if ck.steps > maxSteps {
		return tooComplex
	}
	return ""
}

// matchString: p, as a glob, matches c read literally (a "*" in c is an ordinary character);
// so every value c allows at the proxy, p allows too. The work counts against the budget.
func (ck *checker) matchString(p, c string) bool {
	return ck.tick(glob.Cost(p, c)) && glob.Match(p, c)
}

// coverArray: every element of c is covered by some element of p. Scalars are checked against a
// summary of p (exact strings, globs, the largest number, booleans, null); arrays and objects
// against p's elements of the same kind in turn.
func (ck *checker) coverArray(p, c *node, path string) string {
	if len(c.arr) == 0 {
		return ""
	}
	var (
		strs   = map[string]bool{}
		globs  []string
		maxNum *node
		bools  [2]bool
		null   bool
		byKind [kObject + 1][]*node
	)
	for _, e := range p.arr {
		switch e.kind {
		case kString:
			strs[e.s] = true
			if strings.Contains(e.s, "*") {
				globs = append(globs, e.s)
			}
		case kNumber:
			if maxNum == nil || decimal.Cmp(e.num, maxNum.num) > 0 {
				maxNum = e
			}
		case kBool:
			if e.b {
				bools[1] = true
			} else {
				bools[0] = true
			}
		case kNull:
			null = true
		}
		byKind[e.kind] = append(byKind[e.kind], e)
	}
	if !ck.tick(len(p.arr)) {
		return tooComplex
	}
	for i, e := range c.arr {
		ep := fmt.Sprintf("%s[%d]", path, i)
		ok := false
		switch e.kind {
		case kString:
			ok = strs[e.s]
			for _, g := range globs {
				if ok {
					break
				}
				ok = ck.matchString(g, e.s)
			}
		case kNumber:
			ok = maxNum != nil && decimal.Cmp(e.num, maxNum.num) <= 0
		case kBool:
			ok = e.b && bools[1] || !e.b && bools[0]
		case kNull:
			ok = null
		case kArray, kObject:
			cands := byKind[e.kind]
			first := ""
			for _, pe := range cands {
				r := ck.cover(pe, e, ep)
				if r == "" {
					ok = true
					break
				}
				if first == "" {
					first = r
				}
			}
			if !ok && len(cands) == 1 {
				return first
			}
		}
		if ck.steps > maxSteps {
			return tooComplex
		}
		if !ok {
			return fmt.Sprintf("%s is not covered by any element of the parent's %s", ep, clip(path))
		}
	}
	return ""
}

// effective returns c with the fields it leaves out filled in from p, recursively: objects take
// p's missing fields; an array's object and array elements are filled from the first element of
// p that covers them. p must cover c; nil if the budget runs out.
func (ck *checker) effective(p, c *node) *node {
	switch c.kind {
	case kObject:
		n := &node{kind: kObject, fields: make(map[string]*node, len(p.fields))}
		for _, k := range c.keys {
			v := c.fields[k]
			if pv, ok := p.fields[k]; ok {
				if v = ck.effective(pv, v); v == nil {
					return nil
				}
			}
			n.keys = append(n.keys, k)
			n.fields[k] = v
		}
		for _, k := range p.keys {
			if _, ok := c.fields[k]; !ok {
				n.keys = append(n.keys, k)
				n.fields[k] = p.fields[k]
			}
		}
		return n
	case kArray:
		n := &node{kind: kArray, arr: make([]*node, 0, len(c.arr))}
		for _, e := range c.arr {
			if e.kind == kArray || e.kind == kObject {
				var filled *node
				for _, pe := range p.arr {
					if pe.kind == e.kind && ck.cover(pe, e, "") == "" {
						filled = ck.effective(pe, e)
						break
					}
				}
				if filled == nil {
					return nil
				}
				e = filled
			}
			n.arr = append(n.arr, e)
		}
		return n
	}
	return c
}

// joinPath names a field for a reason: a.b, or a["odd name"].
func joinPath(path, k string) string {
	simple := k != ""
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			simple = false
			break
		}
	}
	switch {
	case !simple:
		return fmt.Sprintf("%s[%q]", path, clip(k))
	case path == "":
		return k
	}
	return path + "." + clip(k)
}
