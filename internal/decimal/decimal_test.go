package decimal

import (
	"encoding/json"
	"errors"
	"math/big"
	"testing"
)

func TestParseCmp(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1", "1.0", 0},
		{"1.50", "15e-1", 0},
		{"-0.0", "0", 0},
		{"9007199254740993", "9007199254740992", 1},
		{"1e999999999", "1e999999998", 1},
		{"-1e999999999", "-1", -1},
		{"0.1000000000000000000001", "0.1", 1},
		{"100", "1e2", 0},
		{"99.5", "100", -1},
	}
	for _, tt := range tests {
		a, err1 := Parse(tt.a)
		b, err2 := Parse(tt.b)
		if err1 != nil || err2 != nil {
			t.Fatalf("Parse(%q), Parse(%q): %v, %v", tt.a, tt.b, err1, err2)
		}
		if got := Cmp(a, b); got != tt.want {
			t.Errorf("Cmp(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
	for lit, want := range map[string]error{"1e1000000001": ErrRange, "01": ErrSyntax, "1.": ErrSyntax, "+1": ErrSyntax, "": ErrSyntax, "1e": ErrSyntax, "NaN": ErrSyntax} {
		if _, err := Parse(lit); !errors.Is(err, want) {
			t.Errorf("Parse(%q) = %v, want %v", lit, err, want)
		}
	}
}

// FuzzParse: Parse accepts exactly the JSON number literals (within range), and Cmp orders them
// as exact rational arithmetic does.
func FuzzParse(f *testing.F) {
	for _, s := range [][2]string{{"1", "1.0"}, {"-0.0", "0"}, {"1e400", "1e-400"}, {"9007199254740993", "9007199254740992"}, {"01", "1e"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		da, errA := Parse(a)
		db, errB := Parse(b)
		for _, x := range []struct {
			lit string
			err error
		}{{a, errA}, {b, errB}} {
			var n json.Number
			valid := json.Unmarshal([]byte(x.lit), &n) == nil && string(n) == x.lit
			if valid != (x.err == nil || errors.Is(x.err, ErrRange)) {
				t.Fatalf("Parse(%q) = %v, but json says valid = %v", x.lit, x.err, valid)
			}
		}
		if errA != nil || errB != nil || len(a)+len(b) > 200 || max(abs(da.exp), abs(db.exp)) > 400 {
			return // big.Rat would build huge exponents digit by digit
		}
		ra, _ := new(big.Rat).SetString(a)
		rb, _ := new(big.Rat).SetString(b)
		if got, want := Cmp(da, db), ra.Cmp(rb); got != want {
			t.Fatalf("Cmp(%s, %s) = %d, big.Rat says %d", a, b, got, want)
		}
	})
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
