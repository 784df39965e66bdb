package glob

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"abc", "abc", true},
		{"abc", "abcd", false},
		{"*", "", true},
		{"*", "anything/at*all", true},
		{"repo:*", "repo:org/*", true},
		{"repo:org/*", "repo:other/x", false},
		{"example.*", "example.attacker.test", true},
		{"example.*", "example", false},
		{"*.corp.example", "x.corp.example", true},
		{"*.corp.example", "corp.example", false},
		{"*.corp.example", "a.b.corp.example", true},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false}, // prefix and suffix may not overlap
		{"a*a", "aa", true},
		{"**a*", "b", false},
		{"**a*", "xay", true},
		{"?", "x", false}, // ? is ordinary
		{"[ab]", "a", false},
		{`\*`, `\x`, true}, // \ is ordinary, * still a star
		{"é*", "éa", true},
		{"*" + strings.Repeat("a", 70) + "*", strings.Repeat("a", 69) + "b" + strings.Repeat("a", 70), true}, // the KMP path
		{"*" + strings.Repeat("a", 70) + "*", strings.Repeat("a", 69) + "b" + strings.Repeat("a", 69), false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
		if got, want := MatchPrefix(tt.pattern, tt.s), reference(tt.pattern+"*", tt.s); got != want {
			t.Errorf("MatchPrefix(%q, %q) = %v, want %v", tt.pattern, tt.s, got, want)
		}
	}
}

// reference matches through regexp: every star is (?s:.*), everything else is quoted.
func reference(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile(`\A(?s:` + strings.Join(parts, ".*") + `)\z`).MatchString(s)
}

// expand replaces each star of s with a random run (stars included), as a value a body might
// hold for a detail s.
func expand(r *rand.Rand, s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c != '*' {
			b.WriteByte(c)
			continue
		}
		for range r.IntN(4) {
			b.WriteByte("ab*."[r.IntN(4)])
		}
	}
	return b.String()
}

// checkPromises states the promises for one pair: Match agrees with the reference,
// MatchPrefix is Match of pattern+"*", and when pattern matches s read literally (the covering
// rule of narrowing), it matches every string s allows as a pattern (the proxy's reading).
func checkPromises(t *testing.T, r *rand.Rand, pattern, s string) {
	got := Match(pattern, s)
	if want := reference(pattern, s); got != want {
		t.Fatalf("Match(%q, %q) = %v, reference says %v", pattern, s, got, want)
	}
	if got, want := MatchPrefix(pattern, s), reference(pattern+"*", s); got != want {
		t.Fatalf("MatchPrefix(%q, %q) = %v, reference says %v", pattern, s, got, want)
	}
	if !got {
		return
	}
	for range 8 {
		if x := expand(r, s); !Match(pattern, x) {
			t.Fatalf("%q covers %q but not %q, which %q allows", pattern, s, x, s)
		}
	}
}

// TestMatchProperties runs checkPromises on random short patterns over a small alphabet, where
// stars, repeats and overlaps are common.
func TestMatchProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	gen := func() string {
		b := make([]byte, r.IntN(8))
		for i := range b {
			b[i] = "ab*"[r.IntN(3)]
		}
		return string(b)
	}
	matched := 0
	for range 20000 {
		p, s := gen(), gen()
		if r.IntN(2) == 0 {
			s = expand(r, p) // often a match
		}
		checkPromises(t, r, p, s)
		if Match(p, s) {
			matched++
		}
	}
	if matched < 5000 {
		t.Fatalf("only %d of 20000 pairs matched: the generator is too weak", matched)
	}
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"example.*", "example.attacker.test"}, {"*.corp.example", "corp.example"},
		{"repo:*", "repo:org/*"}, {"a*b*c", "acb"}, {"**a*", "b*aa"}, {"", ""}, {"*" + strings.Repeat("ab", 40) + "*", strings.Repeat("ab", 81)}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if len(pattern)+len(s) > 4096 || !utf8.ValidString(pattern) || !utf8.ValidString(s) {
			return // the reference regexp is slow, and reads runes (details are UTF-8)
		}
		checkPromises(t, rand.New(rand.NewPCG(uint64(len(pattern)), uint64(len(s)))), pattern, s)
	})
}

// BenchmarkMatchHostile: many pieces over a long string that almost matches each, the shape
// that makes backtracking globs quadratic.
func BenchmarkMatchHostile(b *testing.B) {
	pattern := strings.Repeat("*"+strings.Repeat("a", 100)+"b", 50) + "*"
	s := strings.Repeat("a", 1<<20)
	for b.Loop() {
		if Match(pattern, s) {
			b.Fatal("matched")
		}
	}
}
