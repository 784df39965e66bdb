package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
)

// jsonFlag is the --json flag every command group carries (persistent on the group, so every
// subcommand has it). It is not on the root: serve reads MANDATE_* for every flag it sees.
const jsonFlag = "json"

func addJSONFlag(cmd *cobra.Command) {
	cmd.PersistentFlags().Bool(jsonFlag, false, "print the raw JSON instead of a table")
}

func wantJSON(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool(jsonFlag)
	return v
}

// printJSON writes v as indented JSON. A json.RawMessage or []byte is re-indented as is, so the
// server's answer is printed exactly.
func printJSON(w io.Writer, v any) error {
	var raw []byte
	switch x := v.(type) {
	case json.RawMessage:
		raw = x
	case []byte:
		raw = x
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		raw = b
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		return fmt.Errorf("the answer is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// table writes aligned columns. Every cell goes through termSafe, so a value from the server
// (chosen, perhaps, by an attacker) can neither break the layout nor reach the terminal as a
// control sequence.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = cleanCell(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// cleanCell is termSafe(s), or "-" for the empty string.
func cleanCell(s string) string {
	if s == "" {
		return "-"
	}
	return termSafe(s)
}

// termSafe makes s safe to print on one terminal line: every rune a terminal could act on is
// escaped as \u00XX or \uXXXX — C0 controls (tab, newline and escape included), DEL, C1
// controls (U+0080–U+009F: CSI, OSC, NEL…), the bidi controls (U+061C, U+200E, U+200F,
// U+202A–U+202E, U+2066–U+2069) and the line and paragraph separators (U+2028, U+2029); a byte
// that is not UTF-8 is \xNN. Printable Unicode is kept as is. It is the one sanitizer of every
// value a human-readable command prints.
func termSafe(s string) string {
	clean := true
	for i, r := range s {
		if r == utf8.RuneError || termUnsafe(r) {
			if r == utf8.RuneError {
				if _, n := utf8.DecodeRuneInString(s[i:]); n == 3 {
					continue // a real U+FFFD
				}
			}
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02X", s[i])
		case termUnsafe(r):
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// termUnsafe reports whether a terminal may act on r rather than show it.
func termUnsafe(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069: // bidi
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

// relTime says how far t is from now in at most two units: "in 4m30s", "3h ago", "now".
func relTime(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d == 0:
		return "now"
	case d > 0:
		return "in " + shortDuration(d)
	default:
		return shortDuration(-d) + " ago"
	}
}

// shortDuration prints d (>= 0) in at most its two largest units: 42s, 4m30s, 3h5m, 30d, 2d4h.
func shortDuration(d time.Duration) string {
	d = d.Round(time.Second)
	const day = 24 * time.Hour
	days, d := d/day, d%day
	hours, d := d/time.Hour, d%time.Hour
	mins, d := d/time.Minute, d%time.Minute
	secs := d / time.Second
	parts := []struct {
		n    time.Duration
		unit string
	}{{days, "d"}, {hours, "h"}, {mins, "m"}, {secs, "s"}}
	for i, p := range parts {
		if p.n == 0 {
			continue
		}
		s := fmt.Sprintf("%d%s", p.n, p.unit)
		if i+1 < len(parts) && parts[i+1].n != 0 {
			s += fmt.Sprintf("%d%s", parts[i+1].n, parts[i+1].unit)
		}
		return s
	}
	return "0s"
}

const timeLayout = "2006-01-02 15:04:05 MST"

// when prints an absolute local time with the relative one: "2025-06-01 12:00:00 CEST (in 5m)".
// The zero time is "-".
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(timeLayout) + " (" + relTime(t, now) + ")"
}

func whenPtr(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return when(*t, now)
}

// ago is the short relative form for table columns.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return relTime(t, now)
}

func agoPtr(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return ago(*t, now)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// jsonRaw embeds a server answer as is in a larger JSON value.
func jsonRaw(b []byte) json.RawMessage { return json.RawMessage(bytes.TrimSpace(b)) }
