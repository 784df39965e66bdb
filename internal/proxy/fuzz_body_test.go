package proxy

import (
	"encoding/json"
	"testing"

	"github.com/mandate-dev/mandate/internal/vault"
)

// FuzzCheckBody feeds arbitrary request bodies to the body-rule check, which reads untrusted
// JSON from agents: it must allow or refuse, never panic, and never allow a body whose "to" is
// outside the detail's domains.
func FuzzCheckBody(f *testing.F) {
	for _, seed := range []string{`{"to":"a@example.com"}`, `{"to":["a@example.com","x@evil.test"]}`, `[{"to":"x@evil.test"}]`,
		`{"to":"a@example.com","to":"x@evil.test"}`, `{"To":"x@evil.test"}`, `{"items":[{"amount":1e999999}]}`, `{`, ``, `null`} {
		f.Add([]byte(seed))
	}
	rules := []vault.BodyRule{{Detail: "recipient_domains", Pointer: "/to", Match: "email_domain"}}
	details := []map[string]any{{"type": "api", "recipient_domains": []any{"example.com"}}}
	f.Fuzz(func(t *testing.T, body []byte) {
		if checkBody(rules, details, body) != nil {
			return
		}
		var doc map[string]any
		if json.Unmarshal(body, &doc) != nil {
			return
		}
		for k, v := range doc {
			if foldKey(k) != "to" {
				continue
			}
			for _, s := range asStrings(v) {
				if !(&matcher{}).matchValue(MatchEmailDomain, s, details[0]["recipient_domains"]) {
					t.Fatalf("allowed %q: %q is outside example.com", body, s)
				}
			}
		}
	})
}

func asStrings(v any) []any {
	if list, ok := v.([]any); ok {
		return list
	}
	return []any{v}
}
