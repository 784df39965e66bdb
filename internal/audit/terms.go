package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// TermsView is what a reader is shown of an event's Terms (a task's limits and budget on its
// start, a grant's terms on its creation): every member as a flattened key and a short value,
// and the expiry they imply.
type TermsView struct {
	Fields []TermsField `json:"fields,omitempty"`
	// Expires is when the authority lapses, read from exp / expires_at (a time or Unix seconds)
	// or, relative to start, from lifetime / ttl (a duration such as "1h", or seconds).
	Expires time.Time `json:"expires,omitzero"`
}

// TermsField is one member of Terms: "scopes", "budget.calls", …
type TermsField struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// DecodeTerms reads raw leniently: a JSON object is shown member by member (nested objects as
// dotted keys, arrays joined by ", "), anything else as one "terms" field. start is when the
// authority began (the event's time), for a relative lifetime. The exact shapes are the domain
// packages' (grant and task terms); this is the one place that reads them for people.
func DecodeTerms(raw json.RawMessage, start time.Time) TermsView {
	var v TermsView
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return v
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return TermsView{Fields: []TermsField{{"terms", clipValue(string(raw))}}}
	}
	obj, ok := x.(map[string]any)
	if !ok {
		return TermsView{Fields: []TermsField{{"terms", clipValue(scalar(x))}}}
	}
	flatten("", obj, &v.Fields)
	sort.Slice(v.Fields, func(i, j int) bool { return v.Fields[i].Key < v.Fields[j].Key })
	for _, k := range []string{"exp", "expires_at", "expires", "not_after"} {
		if t, ok := asTime(obj[k]); ok {
			v.Expires = t
			return v
		}
	}
	for _, k := range []string{"lifetime", "ttl", "max_ttl", "task_ttl"} {
		if d, ok := asDuration(obj[k]); ok && !start.IsZero() {
			v.Expires = start.Add(d).UTC()
			return v
		}
	}
	return v
}

func flatten(prefix string, obj map[string]any, out *[]TermsField) {
	for k, x := range obj {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			flatten(key, m, out)
			continue
		}
		*out = append(*out, TermsField{key, clipValue(scalar(x))})
	}
}

// scalar is a short text form of a decoded JSON value.
func scalar(x any) string {
	switch v := x.(type) {
	case nil:
		return "null"
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = scalar(e)
		}
		return strings.Join(parts, ", ")
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

func clipValue(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

func asTime(x any) (time.Time, bool) {
	switch v := x.(type) {
	case string:
		t, err := time.Parse(time.RFC3339Nano, v)
		return t.UTC(), err == nil
	case json.Number:
		f, err := v.Float64()
		if err != nil || f <= 0 || f > 1e11 {
			return time.Time{}, false
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true
	}
	return time.Time{}, false
}

func asDuration(x any) (time.Duration, bool) {
	switch v := x.(type) {
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil && d > 0
	case json.Number:
		f, err := v.Float64()
		if err != nil || f <= 0 || f > 1e10 {
			return 0, false
		}
		return time.Duration(f * float64(time.Second)), true
	}
	return 0, false
}

// String is the fields as "key=value; …".
func (v TermsView) String() string {
	parts := make([]string, len(v.Fields))
	for i, f := range v.Fields {
		parts[i] = fmt.Sprintf("%s=%s", f.Key, f.Value)
	}
	return strings.Join(parts, "; ")
}
