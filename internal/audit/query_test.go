package audit_test

import (
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2026-12-01T09:00:00Z":      time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
		"2026-12-01T10:00:00+01:00": time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
		"2026-12-01":                time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		"15m":                       now.Add(-15 * time.Minute),
		"2h":                        now.Add(-2 * time.Hour),
		"7d":                        now.Add(-7 * 24 * time.Hour),
		"1d12h":                     now.Add(-36 * time.Hour),
		" 90s ":                     now.Add(-90 * time.Second),
	} {
		got, err := audit.ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-5m", "0s", "0d", "d", "5x", "7dd", "2026-13-01", "1d-1h"} {
		if got, err := audit.ParseTime(bad, now); err == nil {
			t.Errorf("ParseTime(%q) = %v, want an error", bad, got)
		}
	}
}

// FuzzParseTime: any input either fails or is a time no later than now when it is relative.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"15m", "7d", "1d12h", "2026-12-01", "2026-12-01T09:00:00Z", "d", "9999999d"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := audit.ParseTime(s, now)
		if err != nil {
			return
		}
		if got.Location() != time.UTC {
			t.Errorf("ParseTime(%q) is not UTC", s)
		}
	})
}

func TestCursor(t *testing.T) {
	for _, seq := range []int64{1, 42, 1 << 40} {
		got, err := audit.ParseCursor(audit.FormatCursor(seq))
		if err != nil || got != seq {
			t.Errorf("cursor %d round-trips to %d, %v", seq, got, err)
		}
	}
	for _, bad := range []string{"", "0", "-1", "abc", "1.5"} {
		if _, err := audit.ParseCursor(bad); err == nil {
			t.Errorf("ParseCursor(%q) succeeded", bad)
		}
	}
}
