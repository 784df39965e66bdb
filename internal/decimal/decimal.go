// Package decimal reads JSON numbers exactly and compares them without expanding them, for the
// numbers of authorization_details: narrowing (a child's number ≤ its parent's) and the proxy's
// body rules (a body's number ≤ the detail's) compare through it, so both agree on every
// number, 1e999999 and 0.1000000000000000000001 included.
package decimal

import (
	"errors"
	"strconv"
	"strings"
)

// MaxExponent bounds the decimal exponent of a number Parse accepts.
const MaxExponent = 1_000_000_000

// Parse's errors.
var (
	ErrSyntax = errors.New("not a JSON number")
	ErrRange  = errors.New("a JSON number with an exponent beyond ±1e9") // MaxExponent
)

// Decimal is an exact JSON number: 0.digits × 10^exp, digits without leading or trailing
// zeros; zero has no digits (and no sign). The zero value is 0.
type Decimal struct {
	neg    bool
	digits string
	exp    int64
}

// Parse parses a JSON number literal (RFC 8259 §6) exactly. Its work is linear in len(lit).
func Parse(lit string) (Decimal, error) {
	bad := ErrSyntax
	s := lit
	var d Decimal
	if strings.HasPrefix(s, "-") {
		d.neg, s = true, s[1:]
	}
	end := strings.IndexAny(s, ".eE")
	if end < 0 {
		end = len(s)
	}
	intPart, rest := s[:end], s[end:]
	if intPart == "" || !allDigits(intPart) || len(intPart) > 1 && intPart[0] == '0' {
		return d, bad
	}
	frac := ""
	if strings.HasPrefix(rest, ".") {
		end = strings.IndexAny(rest, "eE")
		if end < 0 {
			end = len(rest)
		}
		frac, rest = rest[1:end], rest[end:]
		if frac == "" || !allDigits(frac) {
			return d, bad
		}
	}
	var e int64
	if rest != "" {
		es := rest[1:]
		digits := strings.TrimPrefix(strings.TrimPrefix(es, "+"), "-")
		if digits == "" || !allDigits(digits) {
			return d, bad
		}
		v, err := strconv.ParseInt(es, 10, 64)
		if err != nil || v > MaxExponent || v < -MaxExponent {
			return d, ErrRange
		}
		e = v
	}
	all := intPart + frac
	exp := int64(len(intPart)) + e
	trimmed := strings.TrimLeft(all, "0")
	exp -= int64(len(all) - len(trimmed))
	d.digits = strings.TrimRight(trimmed, "0")
	if d.digits == "" {
		return Decimal{}, nil
	}
	d.exp = exp
	return d, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Cmp returns -1, 0 or +1 as a <, = or > b.
func Cmp(a, b Decimal) int {
	sa, sb := a.sign(), b.sign()
	if sa != sb || sa == 0 {
		return cmpInt(sa, sb)
	}
	m := cmpInt(a.exp, b.exp)
	if m == 0 {
		m = strings.Compare(a.digits, b.digits)
	}
	if a.neg {
		return -m
	}
	return m
}

func (d Decimal) sign() int64 {
	switch {
	case d.digits == "":
		return 0
	case d.neg:
		return -1
	}
	return 1
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
