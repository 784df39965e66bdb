package proxy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/vault"
)

// allowedBy is what step 7 decides for a body: details of the upstream's type narrow the
// route's rules; without any, the route's scope alone decides.
func allowedBy(rules []vault.BodyRule, details []json.RawMessage, body []byte) bool {
	d := detailsOfType(details, "api")
	return len(d) == 0 || checkBody(rules, d, body) == nil
}

// TestNarrowedDetailsAllowLess is the promise that ties narrowing to enforcement: if
// NarrowDetails(child, parent) succeeds, then for every rule set and every body, whatever the
// effective child details allow at the proxy, the parent's allow too. Random details (strings
// with stars and capitals, numbers, booleans, arrays, objects, several objects of one type,
// fields left out), random rules of every match kind and random bodies built from the details'
// own patterns.
func TestNarrowedDetailsAllowLess(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	var s propertyStats
	for range 2000 {
		checkNarrowedAllowLess(t, r, &s)
	}
	// The generator must reach the cases that matter, or the test proves nothing.
	if s.narrowed < 1000 || s.childAllowed < 3000 || s.childRefusedParentAllowed < 300 || s.globAllowed < 300 {
		t.Fatalf("generator too weak: %+v", s)
	}
	t.Logf("%+v", s)
}

// FuzzNarrowedDetailsAllowLess runs the same promise from fuzzed seeds.
func FuzzNarrowedDetailsAllowLess(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(7), uint64(9))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		var s propertyStats
		checkNarrowedAllowLess(t, rand.New(rand.NewPCG(a, b)), &s)
	})
}

type propertyStats struct {
	narrowed, childAllowed, childRefusedParentAllowed, globAllowed int
}

func checkNarrowedAllowLess(t *testing.T, r *rand.Rand, s *propertyStats) {
	t.Helper()
	var parent []json.RawMessage
	var parentObjs []map[string]any
	for range 1 + r.IntN(3) {
		o := genDetail(r)
		parentObjs = append(parentObjs, o)
		parent = append(parent, mustJSON(t, o))
	}
	if r.IntN(4) == 0 {
		parent = append(parent, json.RawMessage(`{"type":"other","f0":"x"}`))
	}
	var child []json.RawMessage
	for range r.IntN(3) {
		c := narrowDetail(r, parentObjs[r.IntN(len(parentObjs))])
		if r.IntN(5) == 0 {
			c[fields[r.IntN(len(fields))]] = genValue(r) // often not covered
		}
		child = append(child, mustJSON(t, c))
	}
	eff, err := delegation.NarrowDetails(child, parent)
	if err != nil {
		return
	}
	s.narrowed++
	rules := genRules(r)
	for range 8 {
		from := eff
		if r.IntN(3) == 0 {
			from = parent
		}
		body := genBody(r, from)
		c, p := allowedBy(rules, eff, body), allowedBy(rules, parent, body)
		if c && !p {
			t.Fatalf("the child allows what its parent does not:\nparent %s\nchild  %s\neffective %s\nrules %+v\nbody %s", parent, child, eff, rules, body)
		}
		if c {
			s.childAllowed++
			if strings.Contains(string(body), "@") && strings.Contains(fmt.Sprintf("%s", eff), "*") {
				s.globAllowed++
			}
		} else if p {
			s.childRefusedParentAllowed++
		}
	}
}

var (
	fields   = []string{"f0", "f1", "f2"}
	pointers = []string{"/a", "/b", "/items/*/n", "/A"}
	kinds    = []string{MatchEquals, MatchEmailDomain, MatchPrefix, MatchMax}
	pieces   = []string{"*", "*", "a", "B", ".", "ex", "com", "@", "*."}
	numbers  = []string{"1", "5", "10.0", "1e3", "0.5", "-2", "100", "1e500", "5e-1"}
)

func genPattern(r *rand.Rand) string {
	var b strings.Builder
	for range r.IntN(5) {
		b.WriteString(pieces[r.IntN(len(pieces))])
	}
	return b.String()
}

func genScalar(r *rand.Rand) any {
	switch r.IntN(6) {
	case 0:
		return json.Number(numbers[r.IntN(len(numbers))])
	case 1:
		return r.IntN(2) == 0
	case 2:
		return nil
	}
	return genPattern(r)
}

func genValue(r *rand.Rand) any {
	switch r.IntN(5) {
	case 0:
		var a []any
		for range r.IntN(4) {
			a = append(a, genScalar(r))
		}
		if a == nil {
			a = []any{}
		}
		return a
	case 1:
		return map[string]any{"x": genScalar(r)}
	}
	return genScalar(r)
}

func genDetail(r *rand.Rand) map[string]any {
	o := map[string]any{"type": "api"}
	for _, f := range fields {
		if r.IntN(3) > 0 {
			o[f] = genValue(r)
		}
	}
	return o
}

// narrowDetail makes an object the covering rule accepts under p: fields dropped, numbers
// lowered, stars replaced by narrower text (stars included), array elements dropped.
func narrowDetail(r *rand.Rand, p map[string]any) map[string]any {
	c := map[string]any{"type": "api"}
	for k, v := range p {
		if k != "type" && r.IntN(4) > 0 {
			c[k] = narrowValue(r, v)
		}
	}
	return c
}

func narrowValue(r *rand.Rand, v any) any {
	switch x := v.(type) {
	case string:
		var b strings.Builder
		for _, c := range []byte(x) {
			if c == '*' && r.IntN(3) > 0 {
				b.WriteString(genPattern(r))
				continue
			}
			b.WriteByte(c)
		}
		return b.String()
	case json.Number:
		if r.IntN(2) == 0 {
			return json.Number(numbers[r.IntN(len(numbers))]) // lower or not: NarrowDetails decides
		}
	case []any:
		out := []any{}
		for _, e := range x {
			if r.IntN(3) > 0 {
				out = append(out, narrowValue(r, e))
			}
		}
		return out
	}
	return v
}

func genRules(r *rand.Rand) []vault.BodyRule {
	var rules []vault.BodyRule
	for range 1 + r.IntN(3) {
		rules = append(rules, vault.BodyRule{Detail: fields[r.IntN(len(fields))], Pointer: pointers[r.IntN(len(pointers))], Match: kinds[r.IntN(len(kinds))]})
	}
	return rules
}

// genBody builds a body whose values are mostly the details' own values: their patterns with
// stars expanded and capitals changed, as addresses, their numbers and booleans, in arrays.
func genBody(r *rand.Rand, details []json.RawMessage) []byte {
	var strs []string
	var scalars []any
	var collect func(v any)
	collect = func(v any) {
		switch x := v.(type) {
		case string:
			strs = append(strs, x)
		case json.Number, bool:
			scalars = append(scalars, x)
		case []any:
			for _, e := range x {
				collect(e)
			}
		}
	}
	for _, d := range detailsOfType(details, "api") {
		for _, f := range fields {
			collect(d[f])
		}
	}
	value := func() any {
		if r.IntN(4) == 0 && len(scalars) > 0 {
			return scalars[r.IntN(len(scalars))]
		}
		switch v := genScalar(r).(type) {
		case json.Number, bool:
			return v
		}
		s := genPattern(r)
		if len(strs) > 0 && r.IntN(4) > 0 {
			s = narrowValue(r, strs[r.IntN(len(strs))]).(string)
			s = strings.ReplaceAll(s, "*", "")
		}
		switch r.IntN(4) {
		case 0:
			s = strings.ToUpper(s)
		case 1:
			s = "u@" + s
		case 2:
			s = "Ann <u@" + strings.ToUpper(s) + ">"
		}
		return s
	}
	pick := func() any {
		if r.IntN(4) == 0 {
			return []any{value(), value()}
		}
		return value()
	}
	body := map[string]any{}
	for _, k := range []string{"a", "b"} {
		if r.IntN(3) > 0 {
			body[k] = pick()
		}
	}
	if r.IntN(3) == 0 {
		body["items"] = []any{map[string]any{"n": pick()}, map[string]any{"n": pick()}}
	}
	b, _ := json.Marshal(body)
	return b
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDetailPatterns: detail strings are globs at the proxy, as in narrowing, through the real
// proxy. The case first: a token narrowed from "example.*" to "example.attacker.test"
// may reach only what its parent could, so the parent must allow it too.
func TestDetailPatterns(t *testing.T) {
	e := newEnv(t)
	parent := []json.RawMessage{json.RawMessage(`{"type":"api","recipient_domains":"example.*","from":"example.*"}`)}
	child, err := delegation.NarrowDetails([]json.RawMessage{json.RawMessage(`{"type":"api","recipient_domains":"example.attacker.test","from":"example.attacker.test"}`)}, parent)
	if err != nil {
		t.Fatal(err)
	}
	obj := func(raw []json.RawMessage) []map[string]any {
		var out []map[string]any
		for _, r := range raw {
			var m map[string]any
			json.Unmarshal(r, &m)
			out = append(out, m)
		}
		return out
	}
	d := func(kv ...any) []map[string]any {
		m := map[string]any{"type": "api"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return []map[string]any{m}
	}
	tests := []struct {
		name    string
		details []map[string]any
		body    string
		want    int
		desc    string
	}{
		{"narrowed child: its own value", obj(child), `{"from":"example.attacker.test","to":"a@example.attacker.test"}`, 200, ""},
		{"parent: what the child may", obj(parent), `{"from":"example.attacker.test","to":"a@example.attacker.test"}`, 200, ""},
		{"parent: elsewhere", obj(parent), `{"from":"evil.test"}`, 403, "/from is outside"},
		{"equals glob", d("from", "bot-*@example.com"), `{"from":"bot-7@example.com"}`, 200, ""},
		{"equals glob: other", d("from", "bot-*@example.com"), `{"from":"ceo@example.com"}`, 403, ""},
		{"equals is case-sensitive", d("from", "Bot@example.com"), `{"from":"bot@example.com"}`, 403, ""},
		{"equals star is not a prefix", d("from", "bot"), `{"from":"bot2"}`, 403, ""},
		{"equals number: refused", d("from", 5), `{"from":5}`, 403, "upper bound"},
		{"equals boolean", d("from", true), `{"from":true}`, 200, ""},
		{"email_domain glob", d("recipient_domains", "example.*"), `{"to":"a@example.attacker.test"}`, 200, ""},
		{"email_domain any subdomain", d("recipient_domains", "*.CORP.example"), `{"to":"a@x.y.corp.EXAMPLE"}`, 200, ""},
		{"email_domain not the apex", d("recipient_domains", "*.corp.example"), `{"to":"a@corp.example"}`, 403, ""},
		{"email_domain star", d("recipient_domains", "*"), `{"to":"a@anything.test"}`, 200, ""},
		{"prefix glob", d("subject_prefix", "[bot*] "), `{"subject":"[bot-7] hi"}`, 200, ""},
		{"prefix glob: other", d("subject_prefix", "[bot*] "), `{"subject":"[bo] hi"}`, 403, ""},
		{"prefix empty allows nothing", d("subject_prefix", ""), `{"subject":"x"}`, 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := e.token(tokenOpts{scope: "api:send", details: tt.details})
			req := e.request("POST", "/proxy/api/emails", tok, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			resp, body := e.do(req)
			if resp.StatusCode != tt.want || !strings.Contains(body, tt.desc) {
				t.Fatalf("status %d, want %d with %q: %s", resp.StatusCode, tt.want, tt.desc, body)
			}
		})
	}
}

// TestMaxExact: max compares exactly, as narrowing does, beyond float64 and big.Rat's reach.
// (Through a token, verify reads numbers as float64: see docs/proxy.md.)
func TestMaxExact(t *testing.T) {
	rules := []vault.BodyRule{{Detail: "max", Pointer: "/n", Match: MatchMax}}
	long := "100." + strings.Repeat("0", 120) + "1"
	for _, tt := range []struct {
		max, body string
		want      bool
	}{
		{"1e500", "5", true},
		{"1e500", "1e501", false},
		{long, "100", true},
		{"100", long, false},
		{"100", "1e2", true},
		{"100", "1e999999999999", false}, // beyond any exponent narrowing accepts
	} {
		details := []map[string]any{{"type": "api", "max": json.Number(tt.max)}}
		if got := checkBody(rules, details, []byte(`{"n":`+tt.body+`}`)) == nil; got != tt.want {
			t.Errorf("max %s, body %s: allowed = %v, want %v", tt.max, tt.body, got, tt.want)
		}
	}
}
