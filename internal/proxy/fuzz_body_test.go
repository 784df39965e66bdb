package proxy

import (
	"encoding/json"
	"testing"

	"github.com/mandate-dev/mandate/internal/vault"
)

// FuzzCheckBody feeds arbitrary request bodies to the body-rule check, which reads untrusted
// JSON from agents: it must allow or refuse, never panic, and never allow a body in which an
// upstream reading it leniently (lenientRead, lenientDomains) finds a recipient outside the
// detail's domains or an amount over its max_amount.
func FuzzCheckBody(f *testing.F) {
	for _, seed := range []string{`{"to":"a@example.com"}`, `{"to":["a@example.com","x@evil.test"]}`, `[{"to":"x@evil.test"}]`,
		`{"to":"a@example.com","to":"x@evil.test"}`, `{"To":"x@evil.test"}`, `{"items":[{"amount":1e999999}]}`, `{`, ``, `null`,
		`{"items":{"amount":1000}}`, `{"items":{"0":{"amount":1000}}}`, `{"items":[[{"amount":1000}]]}`, `{"items":[{"amount":1},[{"amount":1000}]]}`,
		`{"to":"x@evil.com\u00a0.corp.example"}`, `{"to":"x@evil.com\uff0c.corp.example"}`, `{"to":"x@evil.com?.corp.example"}`, `{"to":"x@-.corp.example"}`,
		`{"to":"\"x@evil.com\" <a@b.corp.example>"}`, `{"__proto__":{"to":"x@evil.test"}}`, `{"constructor":{"prototype":{"to":"x@evil.test"}}}`,
		`{"ｔｏ":"x@evil.test"}`, `{"to\u200b":"x@evil.test"}`} {
		f.Add([]byte(seed))
	}
	rules := []vault.BodyRule{
		{Detail: "recipient_domains", Pointer: "/to", Match: MatchEmailDomain},
		{Detail: "max_amount", Pointer: "/items/*/amount", Match: MatchMax},
	}
	details := []map[string]any{{"type": "api", "recipient_domains": []any{"example.com", "*.corp.example"}, "max_amount": json.Number("100")}}
	f.Fuzz(func(t *testing.T, body []byte) {
		if checkBody(rules, details, body) != nil {
			return
		}
		for _, v := range lenientRead(body, "/to") {
			s, _ := v.(string)
			for _, d := range lenientDomains(s) {
				if !inGrant(d) {
					t.Fatalf("allowed %q: an upstream reads the domain %q", body, d)
				}
			}
		}
		if over := overMax(body); len(over) > 0 {
			t.Fatalf("allowed %q: an upstream reads the amounts %q", body, over)
		}
	})
}
