package audit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxPage is the most events one page of a query returns.
const MaxPage = 1000

// ParseTime reads a query's since or until: an RFC 3339 time, a date (YYYY-MM-DD, UTC midnight),
// or a duration meaning that long before now ("15m", "2h", "7d", "1d12h"; d is 24 hours).
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, fmt.Errorf("empty time: want RFC 3339 (2026-12-01T09:00:00Z), a date (2026-12-01) or a duration ago (15m, 2h, 7d)")
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.UTC(), nil
	}
	if d, ok := parseAgo(s); ok {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: want RFC 3339 (2026-12-01T09:00:00Z), a date (2026-12-01) or a duration ago (15m, 2h, 7d)", clip(s))
}

// parseAgo reads a positive duration with an optional leading number of days: "7d", "1d12h",
// "90m".
func parseAgo(s string) (time.Duration, bool) {
	var days int64
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 32)
		if err != nil || n < 0 || n > 100*366 {
			return 0, false
		}
		days, s = n, s[i+1:]
	}
	d := time.Duration(days) * 24 * time.Hour
	if s != "" {
		x, err := time.ParseDuration(s)
		if err != nil || x < 0 {
			return 0, false
		}
		d += x
	}
	return d, d > 0
}

// FormatCursor is the cursor of the page after ev: the events older than it.
func FormatCursor(seq int64) string { return strconv.FormatInt(seq, 10) }

// ParseCursor reads a cursor that FormatCursor made.
func ParseCursor(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("cursor %q is not one this server gave: pass next_cursor from the previous page as it came", clip(s))
	}
	return n, nil
}
