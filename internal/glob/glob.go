// Package glob is the one pattern language of authorization_details strings: the token
// endpoint's narrowing (a parent's string covers a child's) and the proxy's body rules (a
// detail allows a body value) both match through it, so "*" means the same in both.
//
// A pattern is a string in which "*" matches any run of bytes, including an empty run, "/" and
// "*"; every other byte matches only itself ("?", "[" and "\" are ordinary). docs/proxy.md and
// docs/delegation.md describe it for users.
package glob

import "strings"

// Match reports whether s matches pattern entirely. Its work is linear in len(pattern)+len(s),
// whatever the pattern (see Cost).
func Match(pattern, s string) bool { return match(pattern, s, true) }

// MatchPrefix reports whether some prefix of s matches pattern entirely, which is
// Match(pattern+"*", s) without building that string.
func MatchPrefix(pattern, s string) bool { return match(pattern, s, false) }

// Cost bounds the steps of one Match or MatchPrefix, for callers that budget many of them.
func Cost(pattern, s string) int { return len(pattern) + len(s) + 1 }

// match is the greedy algorithm for star-only patterns: the part before the first star is a
// prefix of s, the part after the last star a suffix (when anchored), and the pieces between
// are found left to right, each at its leftmost place after the one before. Leftmost is never
// wrong: a later place leaves less of s for the pieces after it. No backtracking.
func match(pattern, s string, anchored bool) bool {
	first := strings.IndexByte(pattern, '*')
	if first < 0 {
		if anchored {
			return pattern == s
		}
		return strings.HasPrefix(s, pattern)
	}
	if !strings.HasPrefix(s, pattern[:first]) {
		return false
	}
	s = s[first:]
	middle := pattern[first+1:]
	if anchored {
		last := strings.LastIndexByte(pattern, '*')
		suffix := pattern[last+1:]
		if !strings.HasSuffix(s, suffix) {
			return false
		}
		s = s[:len(s)-len(suffix)]
		middle = pattern[first+1 : max(first+1, last)]
	}
	for middle != "" {
		piece, rest, _ := strings.Cut(middle, "*")
		middle = rest
		if piece == "" {
			continue
		}
		i := index(s, piece)
		if i < 0 {
			return false
		}
		s = s[i+len(piece):]
	}
	return true
}

// kmpFrom is the piece length from which index uses Knuth–Morris–Pratt: strings.Index is
// faster, and linear for short pieces, but for long ones its fallback can be driven to
// len(s)×len(piece) steps by a chosen input.
const kmpFrom = 64

// index is strings.Index in at most about 64×len(s) + 2×len(piece) steps.
func index(s, piece string) int {
	if len(piece) < kmpFrom {
		return strings.Index(s, piece)
	}
	// fail[i] is the length of the longest proper border of piece[:i+1].
	fail := make([]int, len(piece))
	for i, k := 1, 0; i < len(piece); i++ {
		for k > 0 && piece[i] != piece[k] {
			k = fail[k-1]
		}
		if piece[i] == piece[k] {
			k++
		}
		fail[i] = k
	}
	for i, k := 0, 0; i < len(s); i++ {
		for k > 0 && s[i] != piece[k] {
			k = fail[k-1]
		}
		if s[i] == piece[k] {
			k++
		}
		if k == len(piece) {
			return i - k + 1
		}
	}
	return -1
}
