package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90m":    90 * time.Minute,
		"1h30m":  90 * time.Minute,
		"30d":    30 * 24 * time.Hour,
		"1d12h":  36 * time.Hour,
		"2d30m":  48*time.Hour + 30*time.Minute,
		" 15m ":  15 * time.Minute,
		"0d5s":   5 * time.Second,
		"1.5h":   90 * time.Minute,
		"366d":   366 * 24 * time.Hour,
		"45s":    45 * time.Second,
		"1d0h0m": 24 * time.Hour,
	} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "0d", "-5m", "1d-5m", "1.5d", "d", "xd", "5", "1w", "-1d", "+5m", "1d+5m", "99999999d", "1dd"} {
		if got, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseBudget(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want map[string]int64
		err  string
	}{
		{in: nil, want: nil},
		{in: []string{"requests=100"}, want: map[string]int64{"requests": 100}},
		{in: []string{"requests=100", "tokens=0"}, want: map[string]int64{"requests": 100, "tokens": 0}},
		{in: []string{"requests=100, tokens=5"}, want: map[string]int64{"requests": 100, "tokens": 5}},
		{in: []string{" a = 1 "}, want: map[string]int64{"a": 1}},
		{in: []string{"requests"}, err: "want name=N"},
		{in: []string{"=5"}, err: "want name=N"},
		{in: []string{"requests=-1"}, err: "want name=N"},
		{in: []string{"requests=1.5"}, err: "want name=N"},
		{in: []string{"requests=ten"}, err: "want name=N"},
		{in: []string{"a=1", "a=2"}, err: "given twice"},
	} {
		got, err := parseBudget(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseBudget(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseBudget(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("parseBudget(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestSplitScopes(t *testing.T) {
	got := splitScopes([]string{"repo:read  repo:write", "issues:read", ""})
	if diff := cmp.Diff([]string{"repo:read", "repo:write", "issues:read"}, got); diff != "" {
		t.Errorf("splitScopes (-want +got):\n%s", diff)
	}
}
