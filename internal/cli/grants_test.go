package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/delegation"
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

// TestParseBudget: key=N pairs, and only keys mandate enforces, for where the budget is set
// (requests=100 was the --help example and was enforced by nothing).
func TestParseBudget(t *testing.T) {
	grant, task := delegation.BudgetOfGrant, delegation.BudgetOfTask
	for _, tc := range []struct {
		in   []string
		of   delegation.BudgetOf
		want map[string]int64
		err  string
	}{
		{in: nil, of: grant, want: nil},
		{in: []string{"calls=100"}, of: grant, want: map[string]int64{"calls": 100}},
		{in: []string{"calls=500", "task_calls=0"}, of: grant, want: map[string]int64{"calls": 500, "task_calls": 0}},
		{in: []string{"calls=500, calls:ahrefs=5,max_request_bytes=1024"}, of: task, want: map[string]int64{"calls": 500, "calls:ahrefs": 5, "max_request_bytes": 1024}},
		{in: []string{" calls=1 "}, of: task, want: map[string]int64{"calls": 1}},
		{in: []string{"calls=0"}, of: task, want: map[string]int64{"calls": 0}},
		{in: []string{"calls=9223372036854775807"}, of: task, want: map[string]int64{"calls": 9223372036854775807}},
		{in: []string{"calls = 1"}, of: task, err: "want key=N without spaces"},
		{in: []string{"calls= 1"}, of: task, err: `budget "calls" is  1: want a whole number >= 0 in plain digits`},
		{in: []string{"calls=+3"}, of: grant, err: `budget "calls" is +3: want a whole number >= 0 in plain digits (no sign, leading zero, fraction or exponent)`},
		{in: []string{"calls=03"}, of: grant, err: `budget "calls" is 03`},
		{in: []string{"calls=00"}, of: grant, err: `budget "calls" is 00`},
		{in: []string{"calls=1e2"}, of: grant, err: `budget "calls" is 1e2`},
		{in: []string{"calls=9223372036854775808"}, of: grant, err: `budget "calls" is 9223372036854775808`},
		{in: []string{"task_calls:ahrefs=3"}, of: grant, want: map[string]int64{"task_calls:ahrefs": 3}},
		{in: []string{"requests=500"}, of: grant, err: `--budget: budget "requests" is not a budget mandate knows: use calls, calls:UPSTREAM, task_calls, task_calls:UPSTREAM, max_request_bytes`},
		{in: []string{"requests=500"}, of: task, err: "use calls, calls:UPSTREAM, max_request_bytes"},
		{in: []string{"task_calls=5"}, of: task, err: "set on a grant, not a task"},
		{in: []string{"calls:Bad_Name=5"}, of: grant, err: "not an upstream name"},
		{in: []string{"calls"}, of: grant, err: "want key=N"},
		{in: []string{"=5"}, of: grant, err: "want key=N"},
		{in: []string{"calls=-1"}, of: grant, err: `budget "calls" is -1: want a whole number`},
		{in: []string{"calls=1.5"}, of: grant, err: `budget "calls" is 1.5: want a whole number`},
		{in: []string{"calls=2.0"}, of: grant, err: `budget "calls" is 2.0: want a whole number`},
		{in: []string{"calls=ten"}, of: grant, err: `budget "calls" is ten: want a whole number`},
		{in: []string{"calls=1", "calls=2"}, of: grant, err: "given twice"},
	} {
		got, err := parseBudget(tc.in, tc.of)
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
