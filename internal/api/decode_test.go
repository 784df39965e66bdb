package api

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func TestDuplicateMember(t *testing.T) {
	for raw, want := range map[string]string{
		`{"budget":{"calls":3},"budget":{"calls":1000}}`: "budget",
		`{"a":1,"b":{"calls":3,"calls":1}}`:              "calls",
		`{"a":[{"x":1},{"x":2}],"b":{"x":1}}`:            "",
		`{"calls":1,"\u0063alls":2}`:                     "calls",
		`[{"a":1},{"a":1}]`:                              "",
		`{"a":{},"b":[],"a":null}`:                       "a",
		`{}`:                                             "",
		`{"n":1e400,"a":1,"a":2}`:                        "a",
		`{"a":1,"a"`:                                     "a",
		`{"a":`:                                          "",
		`not json`:                                       "",
	} {
		if k, _ := duplicateMember([]byte(raw)); k != want {
			t.Errorf("duplicateMember(%s) = %q, want %q", raw, k, want)
		}
	}
}

// TestDuplicateMemberProperty: for random JSON texts, a duplicate is reported exactly when one
// object of the text names a member twice (as decoded: an escaped name is the same name).
func TestDuplicateMemberProperty(t *testing.T) {
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 9))
		var b strings.Builder
		dup := randomJSON(r, &b, 0)
		if _, got := duplicateMember([]byte(b.String())); got != dup || !json.Valid([]byte(b.String())) {
			t.Fatalf("duplicateMember(%s) = %v, want %v", b.String(), got, dup)
		}
	}
}

// randomJSON writes a random JSON value to b and reports whether it names a member twice.
func randomJSON(r *rand.Rand, b *strings.Builder, depth int) bool {
	names := []string{"a", "b", `\u0061`, "calls", `c\u0061lls`}
	decoded := []string{"a", "b", "a", "calls", "calls"}
	dup := false
	switch k := r.IntN(4); {
	case depth < 3 && k == 0:
		b.WriteByte('{')
		seen := map[string]bool{}
		for i := range r.IntN(4) {
			if i > 0 {
				b.WriteByte(',')
			}
			n := r.IntN(len(names))
			dup = dup || seen[decoded[n]]
			seen[decoded[n]] = true
			b.WriteString(`"` + names[n] + `":`)
			dup = randomJSON(r, b, depth+1) || dup
		}
		b.WriteByte('}')
	case depth < 3 && k == 1:
		b.WriteByte('[')
		for i := range r.IntN(4) {
			if i > 0 {
				b.WriteByte(',')
			}
			dup = randomJSON(r, b, depth+1) || dup
		}
		b.WriteByte(']')
	default:
		b.WriteString([]string{"null", "true", `"a"`, strconv.Itoa(r.IntN(100))}[r.IntN(4)])
	}
	return dup
}

// FuzzDuplicateMember: never a panic; a value holds a duplicate exactly as much inside an array
// twice, and an object naming it twice has one.
func FuzzDuplicateMember(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":1,"a":2}`, `[{"a":{"b":1,"b":2}}]`, `1`, `{"\u0061":1,"a":2}`, `{`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		k, dup := duplicateMember([]byte(raw))
		if !json.Valid([]byte(raw)) {
			return
		}
		if k2, dup2 := duplicateMember([]byte("[" + raw + "," + raw + "]")); k2 != k || dup2 != dup {
			t.Fatalf("%s: %q %v alone, %q %v twice in an array", raw, k, dup, k2, dup2)
		}
		if k2, dup2 := duplicateMember([]byte(`{"x":` + raw + `,"x":` + raw + `}`)); !dup2 || (k2 != k && k2 != "x") {
			t.Fatalf("%s named twice: %q %v", raw, k2, dup2)
		}
	})
}
