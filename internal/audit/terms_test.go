package audit_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
)

func TestDecodeTerms(t *testing.T) {
	start := time.Date(2026, 12, 3, 14, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, raw string
		fields    []audit.TermsField
		expires   time.Time
	}{
		{"empty", ``, nil, time.Time{}},
		{"null", `null`, nil, time.Time{}},
		{"task", `{"scopes":["a","b"],"budget":{"calls":100,"usd":"2.50"},"exp":"2026-12-03T15:00:00Z"}`,
			[]audit.TermsField{{"budget.calls", "100"}, {"budget.usd", "2.50"}, {"exp", "2026-12-03T15:00:00Z"}, {"scopes", "a, b"}},
			time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)},
		{"unix exp", `{"exp":1796313600}`, []audit.TermsField{{"exp", "1796313600"}}, time.Unix(1796313600, 0).UTC()},
		{"lifetime", `{"lifetime":"720h","max_depth":3}`, []audit.TermsField{{"lifetime", "720h"}, {"max_depth", "3"}}, start.Add(720 * time.Hour)},
		{"ttl seconds", `{"ttl":3600}`, []audit.TermsField{{"ttl", "3600"}}, start.Add(time.Hour)},
		{"not an object", `["x"]`, []audit.TermsField{{"terms", "x"}}, time.Time{}},
		{"not JSON", `exp=soon`, []audit.TermsField{{"terms", "exp=soon"}}, time.Time{}},
		{"empty nested object", `{"details":{}}`, []audit.TermsField{{"details", `{}`}}, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := audit.DecodeTerms(json.RawMessage(tc.raw), start)
			if diff := cmp.Diff(tc.fields, got.Fields); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			if !got.Expires.Equal(tc.expires) {
				t.Errorf("expires %v, want %v", got.Expires, tc.expires)
			}
		})
	}
}

// FuzzDecodeTerms: whatever a stored event's terms hold, DecodeTerms returns sorted, bounded
// fields and never panics.
func FuzzDecodeTerms(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"exp":1e300}`, `{"lifetime":"-1h"}`, `{"a":{"b":{"c":[1,{"d":2}]}}}`, `"x"`, `{`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v := audit.DecodeTerms(json.RawMessage(raw), time.Unix(0, 0))
		if !slices.IsSortedFunc(v.Fields, func(a, b audit.TermsField) int { return strings.Compare(a.Key, b.Key) }) {
			t.Errorf("fields not sorted: %v", v.Fields)
		}
		for _, fl := range v.Fields {
			if len(fl.Value) > 200+len("…") {
				t.Errorf("value of %q is %d bytes", fl.Key, len(fl.Value))
			}
		}
	})
}
