package api

import "testing"

// TestParseCursor: a feed cursor is one plain decimal number; every other spelling is refused
// rather than read as some other cursor.
func TestParseCursor(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want int64
		ok   bool
	}{
		{[]string{"0"}, 0, true},
		{[]string{"42"}, 42, true},
		{[]string{"9223372036854775807"}, 9223372036854775807, true},
		{[]string{"+3"}, 0, false},
		{[]string{"-1"}, 0, false},
		{[]string{" 3"}, 0, false},
		{[]string{"3 "}, 0, false},
		{[]string{"1e3"}, 0, false},
		{[]string{"0x10"}, 0, false},
		{[]string{"9223372036854775808"}, 0, false},
		{[]string{"١"}, 0, false},
		{[]string{""}, 0, false},
		{[]string{"14", "1"}, 0, false},
	} {
		got, ok := parseCursor(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseCursor(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
