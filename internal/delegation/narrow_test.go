package delegation

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// checkNarrowErr fails unless err is a *NarrowError with limit whose Msg contains msg, or err is
// nil when limit is "".
func checkNarrowErr(t *testing.T, err error, limit, msg string) {
	t.Helper()
	if limit == "" {
		if err != nil {
			t.Fatalf("err = %v, want nil", err)
		}
		return
	}
	var ne *NarrowError
	if !errors.As(err, &ne) {
		t.Fatalf("err = %v (%T), want *NarrowError with Limit %q", err, err, limit)
	}
	if ne.Limit != limit || !strings.Contains(ne.Msg, msg) {
		t.Fatalf("err = {%q, %q}, want Limit %q and Msg containing %q", ne.Limit, ne.Msg, limit, msg)
	}
	if len(ne.Msg) > 400 {
		t.Fatalf("Msg is %d bytes; values must be clipped", len(ne.Msg))
	}
}

func TestNarrowScopes(t *testing.T) {
	parent := []string{"repo:read", "issues:write", "Repo:Admin"}
	tests := map[string]struct {
		requested, parent []string
		want              []string
		limit, msg        string
	}{
		"subset":                {requested: []string{"repo:read"}, parent: parent, want: []string{"repo:read"}},
		"all, requested order":  {requested: []string{"issues:write", "repo:read"}, parent: parent, want: []string{"issues:write", "repo:read"}},
		"duplicates removed":    {requested: []string{"repo:read", "repo:read", "issues:write", "repo:read"}, parent: parent, want: []string{"repo:read", "issues:write"}},
		"empty inherits parent": {requested: nil, parent: parent, want: parent},
		"empty inherits deduped": {
			requested: []string{}, parent: []string{"a", "b", "a"}, want: []string{"a", "b"},
		},
		"empty parent, empty request": {requested: nil, parent: nil, want: []string{}},
		"widening refused": {
			requested: []string{"repo:read", "repo:write"}, parent: parent, limit: LimitScope,
			msg: `scope "repo:write" is not in the parent's scopes (repo:read issues:write Repo:Admin)`,
		},
		"case-sensitive":          {requested: []string{"repo:admin"}, parent: parent, limit: LimitScope, msg: `"repo:admin"`},
		"no prefix match":         {requested: []string{"repo"}, parent: parent, limit: LimitScope, msg: `"repo"`},
		"anything from no parent": {requested: []string{"repo:read"}, parent: nil, limit: LimitScope, msg: "(none)"},
		"empty token refused":     {requested: []string{""}, parent: []string{""}, limit: LimitScope, msg: "not a valid scope token"},
		"token with space":        {requested: []string{"a b"}, parent: []string{"a b"}, limit: LimitScope, msg: "not a valid scope token"},
		"long token clipped": {
			requested: []string{strings.Repeat("x", 500)}, parent: parent, limit: LimitScope, msg: "xxx…",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NarrowScopes(tt.requested, tt.parent)
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("NarrowScopes() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNarrowNormalizeResource(t *testing.T) {
	tests := map[string]struct {
		in, want   string
		limit, msg string
	}{
		"already normal":     {in: "https://api.example.com/v1", want: "https://api.example.com/v1"},
		"case and port":      {in: "HTTPS://API.Example.com:443", want: "https://api.example.com/"},
		"http default port":  {in: "http://Example.com:80/x", want: "http://example.com/x"},
		"other port kept":    {in: "https://api.example.com:8443", want: "https://api.example.com:8443/"},
		"port 80 on https":   {in: "https://api.example.com:80/", want: "https://api.example.com:80/"},
		"empty port":         {in: "https://api.example.com:/a", want: "https://api.example.com/a"},
		"path case kept":     {in: "https://api.example.com/Repo/X", want: "https://api.example.com/Repo/X"},
		"ipv6":               {in: "https://[2001:DB8::1]:443/", want: "https://[2001:db8::1]/"},
		"urn":                {in: "urn:example:Resource", want: "urn:example:Resource"},
		"other scheme":       {in: "SPIFFE://Trust.Example/ns/x", want: "spiffe://trust.example/ns/x"},
		"query refused":      {in: "https://api.example.com/?a=b", limit: LimitResource, msg: "has a query"},
		"empty query":        {in: "https://api.example.com/?", limit: LimitResource, msg: "has a query"},
		"fragment refused":   {in: "https://api.example.com/#x", limit: LimitResource, msg: "has a fragment"},
		"empty fragment":     {in: "https://api.example.com/#", limit: LimitResource, msg: "has a fragment"},
		"relative refused":   {in: "/v1/things", limit: LimitResource, msg: "not an absolute URI"},
		"empty refused":      {in: "", limit: LimitResource, msg: "not an absolute URI"},
		"no host":            {in: "https:///path", limit: LimitResource, msg: "has no host"},
		"userinfo refused":   {in: "https://api.example.com@evil.example/", limit: LimitResource, msg: "user information"},
		"unparseable":        {in: "https://exa mple.com/", limit: LimitResource, msg: "not an absolute URI"},
		"bad port":           {in: "https://example.com:x/", limit: LimitResource, msg: "not an absolute URI"},
		"percent kept as is": {in: "https://example.com/a%2Fb", want: "https://example.com/a%2Fb"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NormalizeResource(tt.in)
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if got != tt.want {
				t.Errorf("NormalizeResource(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestNarrowResources(t *testing.T) {
	parent := []string{"https://api.example.com", "HTTPS://Files.Example.com:443/upload"}
	tests := map[string]struct {
		requested, parent []string
		want              []string
		limit, msg        string
	}{
		"empty inherits normalised": {parent: parent, want: []string{"https://api.example.com/", "https://files.example.com/upload"}},
		"equal after normalisation": {
			requested: []string{"HTTPS://API.Example.com:443"}, parent: parent, want: []string{"https://api.example.com/"},
		},
		"duplicates after normalisation": {
			requested: []string{"https://files.example.com/upload", "https://API.example.com/", "https://files.example.com:443/upload"},
			parent:    parent,
			want:      []string{"https://files.example.com/upload", "https://api.example.com/"},
		},
		"no prefix matching": {
			requested: []string{"https://api.example.com/v1"}, parent: parent, limit: LimitResource,
			msg: `resource "https://api.example.com/v1" is not in the parent's resources (https://api.example.com/ https://files.example.com/upload)`,
		},
		"other host": {requested: []string{"https://evil.example/"}, parent: parent, limit: LimitResource, msg: "is not in the parent's"},
		"query":      {requested: []string{"https://api.example.com/?x=1"}, parent: parent, limit: LimitResource, msg: "has a query"},
		"scheme differs": {
			requested: []string{"http://api.example.com/"}, parent: parent, limit: LimitResource, msg: "is not in the parent's",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NarrowResources(tt.requested, tt.parent)
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("NarrowResources() (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("malformed parent is not the client's error", func(t *testing.T) {
		_, err := NarrowResources(nil, []string{"https://x/?q"})
		var ne *NarrowError
		if err == nil || errors.As(err, &ne) {
			t.Fatalf("err = %v, want a plain error", err)
		}
	})
}

func TestCovers(t *testing.T) {
	tests := map[string]struct {
		parent, child string
		want          bool
		reason        string // contained in the reason when not covered
	}{
		"identical": {
			parent: `{"type":"repo","actions":["read","write"]}`, child: `{"type":"repo","actions":["read","write"]}`, want: true,
		},
		"type only covers type only": {parent: `{"type":"t"}`, child: `{"type":"t"}`, want: true},
		"different type": {
			parent: `{"type":"repo"}`, child: `{"type":"payment"}`, reason: `type "payment" differs from the parent's "repo"`,
		},
		"type is exact, not a glob": {parent: `{"type":"*"}`, child: `{"type":"repo"}`, reason: "differs"},
		"narrower array": {
			parent: `{"type":"repo","actions":["read","write","delete"]}`, child: `{"type":"repo","actions":["write","read"]}`, want: true,
		},
		"wider array": {
			parent: `{"type":"repo","actions":["read"]}`, child: `{"type":"repo","actions":["read","write"]}`,
			reason: "actions[1] is not covered by any element of the parent's actions",
		},
		"empty array covered":   {parent: `{"type":"t","a":["x"]}`, child: `{"type":"t","a":[]}`, want: true},
		"repeated element":      {parent: `{"type":"t","a":["x"]}`, child: `{"type":"t","a":["x","x"]}`, want: true},
		"fewer fields":          {parent: `{"type":"t","a":1,"b":"x"}`, child: `{"type":"t","b":"x"}`, want: true},
		"glob covers":           {parent: `{"type":"repo","name":"repo:org/*"}`, child: `{"type":"repo","name":"repo:org/x"}`, want: true},
		"glob crosses slashes":  {parent: `{"type":"repo","name":"repo:org/*"}`, child: `{"type":"repo","name":"repo:org/x/y/z"}`, want: true},
		"glob matches empty":    {parent: `{"type":"repo","name":"repo:org/*"}`, child: `{"type":"repo","name":"repo:org/"}`, want: true},
		"glob covers narrower":  {parent: `{"type":"repo","name":"repo:*"}`, child: `{"type":"repo","name":"repo:org/*"}`, want: true},
		"star alone":            {parent: `{"type":"t","s":"*"}`, child: `{"type":"t","s":"anything at all"}`, want: true},
		"glob in the middle":    {parent: `{"type":"t","s":"a*z"}`, child: `{"type":"t","s":"abcz"}`, want: true},
		"glob anchored at end":  {parent: `{"type":"t","s":"a*z"}`, child: `{"type":"t","s":"abcza"}`, reason: `s "abcza" is not covered by the parent's "a*z"`},
		"several stars":         {parent: `{"type":"t","s":"*/x/*"}`, child: `{"type":"t","s":"a/b/x/c"}`, want: true},
		"other glob syntax off": {parent: `{"type":"t","s":"a?c"}`, child: `{"type":"t","s":"abc"}`, reason: "not covered"},
		"glob refuses other org": {
			parent: `{"type":"repo","name":"repo:org/*"}`, child: `{"type":"repo","name":"repo:other/x"}`,
			reason: `name "repo:other/x" is not covered by the parent's "repo:org/*"`,
		},
		"child glob needs parent glob": {
			parent: `{"type":"repo","name":"repo:org/x"}`, child: `{"type":"repo","name":"repo:org/*"}`, reason: "not covered",
		},
		"string case-sensitive": {parent: `{"type":"t","s":"Read"}`, child: `{"type":"t","s":"read"}`, reason: "not covered"},
		"glob in array": {
			parent: `{"type":"t","locations":["https://api.example.com/*","https://x/"]}`,
			child:  `{"type":"t","locations":["https://x/","https://api.example.com/v1/a"]}`, want: true,
		},
		"number less":       {parent: `{"type":"pay","amount":100}`, child: `{"type":"pay","amount":99.99}`, want: true},
		"number equal":      {parent: `{"type":"pay","amount":100}`, child: `{"type":"pay","amount":1e2}`, want: true},
		"number equal form": {parent: `{"type":"pay","amount":1.50}`, child: `{"type":"pay","amount":15E-1}`, want: true},
		"number greater": {
			parent: `{"type":"pay","amount":100}`, child: `{"type":"pay","amount":100.01}`, reason: "amount 100.01 exceeds the parent's 100",
		},
		"negative numbers": {parent: `{"type":"t","n":-1}`, child: `{"type":"t","n":-2}`, want: true},
		"negative greater": {parent: `{"type":"t","n":-2}`, child: `{"type":"t","n":-1.5}`, reason: "exceeds"},
		"zero forms":       {parent: `{"type":"t","n":0}`, child: `{"type":"t","n":-0.0e5}`, want: true},
		"beyond float64": {
			parent: `{"type":"t","n":9007199254740993}`, child: `{"type":"t","n":9007199254740992}`, want: true,
		},
		"beyond float64 greater": {
			parent: `{"type":"t","n":9007199254740992}`, child: `{"type":"t","n":9007199254740993}`, reason: "exceeds",
		},
		"tiny difference": {parent: `{"type":"t","n":1e-400}`, child: `{"type":"t","n":2e-400}`, reason: "exceeds"},
		"huge exponent refused": {
			parent: `{"type":"t","n":1e99999999999}`, child: `{"type":"t","n":1}`, reason: "the parent is refused: number",
		},
		"bool equal":     {parent: `{"type":"t","b":true}`, child: `{"type":"t","b":true}`, want: true},
		"bool differs":   {parent: `{"type":"t","b":false}`, child: `{"type":"t","b":true}`, reason: "b true differs from the parent's false"},
		"null equal":     {parent: `{"type":"t","x":null}`, child: `{"type":"t","x":null}`, want: true},
		"null vs string": {parent: `{"type":"t","x":null}`, child: `{"type":"t","x":"a"}`, reason: "x is a string where the parent has null"},
		"kind mismatch":  {parent: `{"type":"t","n":"100"}`, child: `{"type":"t","n":100}`, reason: "n is a number where the parent has a string"},
		"array vs scalar": {
			parent: `{"type":"t","a":"read"}`, child: `{"type":"t","a":["read"]}`, reason: "a is an array where the parent has a string",
		},
		"field absent in parent": {
			parent: `{"type":"repo","actions":["read"]}`, child: `{"type":"repo","actions":["read"],"branches":["main"]}`,
			reason: "the parent does not grant branches",
		},
		"nested objects": {
			parent: `{"type":"pay","limit":{"amount":100,"currency":"EUR"}}`, child: `{"type":"pay","limit":{"amount":50}}`, want: true,
		},
		"nested number greater": {
			parent: `{"type":"pay","limit":{"amount":100,"currency":"EUR"}}`, child: `{"type":"pay","limit":{"amount":500,"currency":"EUR"}}`,
			reason: "limit.amount 500 exceeds the parent's 100",
		},
		"nested field absent": {
			parent: `{"type":"pay","limit":{"amount":100}}`, child: `{"type":"pay","limit":{"amount":1,"currency":"EUR"}}`,
			reason: "the parent does not grant limit.currency",
		},
		"odd field names quoted": {
			parent: `{"type":"t","a b":{}}`, child: `{"type":"t","a b":{"c.d":1}}`, reason: `the parent does not grant ["a b"]["c.d"]`,
		},
		"arrays of objects": {
			parent: `{"type":"acct","accounts":[{"iban":"DE1*","max":100},{"iban":"FR1","max":10}]}`,
			child:  `{"type":"acct","accounts":[{"iban":"FR1","max":5},{"iban":"DE123","max":100}]}`, want: true,
		},
		"arrays of objects, one too wide": {
			parent: `{"type":"acct","accounts":[{"iban":"DE1*","max":100},{"iban":"FR1","max":10}]}`,
			child:  `{"type":"acct","accounts":[{"iban":"FR1","max":50}]}`,
			reason: "accounts[0] is not covered by any element of the parent's accounts",
		},
		"single candidate gives the deeper reason": {
			parent: `{"type":"acct","accounts":[{"iban":"DE1*","max":100}]}`,
			child:  `{"type":"acct","accounts":[{"iban":"DE1","max":500}]}`,
			reason: "accounts[0].max 500 exceeds the parent's 100",
		},
		"nested arrays": {parent: `{"type":"t","m":[[1,2],["a"]]}`, child: `{"type":"t","m":[[2,1,0],[]]}`, want: true},
		"number in array under max": {
			parent: `{"type":"t","n":[1,10]}`, child: `{"type":"t","n":[5]}`, want: true,
		},
		"nested type is an ordinary field": {
			parent: `{"type":"t","o":{"type":"a*"}}`, child: `{"type":"t","o":{"type":"ab"}}`, want: true,
		},
		"child not an object":  {parent: `{"type":"t"}`, child: `["type"]`, reason: "the child is an array, not an object"},
		"child without type":   {parent: `{"type":"t"}`, child: `{"a":1}`, reason: `the child has no "type"`},
		"empty type":           {parent: `{"type":""}`, child: `{"type":""}`, reason: `the parent has no "type"`},
		"malformed child":      {parent: `{"type":"t"}`, child: `{"type":"t",}`, reason: "the child is not valid JSON"},
		"trailing data":        {parent: `{"type":"t"}`, child: `{"type":"t"} {}`, reason: "data after the value"},
		"duplicate member":     {parent: `{"type":"t","a":1}`, child: `{"type":"t","a":1,"a":2}`, reason: `duplicate member "a"`},
		"escaped duplicate":    {parent: `{"type":"t"}`, child: `{"type":"t","\u0074ype":"u"}`, reason: `duplicate member "type"`},
		"too deep":             {parent: `{"type":"t","a":[[[[[[[[1]]]]]]]]}`, child: `{"type":"t"}`, reason: "nested more than 8 levels"},
		"deepest allowed":      {parent: `{"type":"t","a":[[[[[[[]]]]]]]}`, child: `{"type":"t","a":[[[[[[[]]]]]]]}`, want: true},
		"invalid UTF-8 child":  {parent: `{"type":"t","s":"*"}`, child: "{\"type\":\"t\",\"s\":\"\xff\"}", reason: "not valid UTF-8"},
		"unicode glob matches": {parent: `{"type":"t","s":"ü*ß"}`, child: `{"type":"t","s":"üxyß"}`, want: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, reason := Covers(json.RawMessage(tt.parent), json.RawMessage(tt.child))
			if got != tt.want {
				t.Fatalf("Covers() = %v (%s), want %v", got, reason, tt.want)
			}
			if tt.want && reason != "" {
				t.Errorf("covered, but reason %q", reason)
			}
			if !tt.want && !strings.Contains(reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", reason, tt.reason)
			}
		})
	}
}

func raws(ss ...string) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(ss))
	for _, s := range ss {
		out = append(out, json.RawMessage(s))
	}
	return out
}

func strs(rs []json.RawMessage) []string {
	if rs == nil {
		return nil
	}
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, string(r))
	}
	return out
}

func TestNarrowDetails(t *testing.T) {
	repo := `{"type":"repo","actions":["read","write"],"name":"repo:org/*"}`
	pay := `{"type":"pay","limit":{"amount":100,"currency":"EUR"},"creditor":"DE*"}`
	tests := map[string]struct {
		requested, parent []string
		want              []string
		limit, msg        string
	}{
		"empty inherits parent": {parent: []string{repo, pay}, want: []string{repo, pay}},
		"omitted field inherited": {
			requested: []string{`{"type":"repo","actions":["read"]}`}, parent: []string{repo},
			want: []string{`{"type":"repo","actions":["read"],"name":"repo:org/*"}`},
		},
		"type only inherits everything": {
			requested: []string{`{"type":"repo"}`}, parent: []string{repo},
			want: []string{`{"type":"repo","actions":["read","write"],"name":"repo:org/*"}`},
		},
		"nested omitted field inherited": {
			requested: []string{`{"type":"pay","limit":{"amount":20}}`}, parent: []string{pay},
			want: []string{`{"type":"pay","limit":{"amount":20,"currency":"EUR"},"creditor":"DE*"}`},
		},
		"objects in arrays inherit from the covering element": {
			requested: []string{`{"type":"acct","accounts":[{"iban":"FR1"},{"iban":"DE12"}]}`},
			parent:    []string{`{"type":"acct","accounts":[{"iban":"DE*","max":100},{"iban":"FR1","max":10}]}`},
			want:      []string{`{"type":"acct","accounts":[{"iban":"FR1","max":10},{"iban":"DE12","max":100}]}`},
		},
		"first covering parent object fills in": {
			requested: []string{`{"type":"repo","actions":["read"]}`},
			parent:    []string{`{"type":"repo","actions":["read"],"name":"a"}`, `{"type":"repo","actions":["read"],"name":"b"}`},
			want:      []string{`{"type":"repo","actions":["read"],"name":"a"}`},
		},
		"covered by the second parent object": {
			requested: []string{`{"type":"repo","actions":["write"]}`},
			parent:    []string{`{"type":"repo","actions":["read"]}`, `{"type":"repo","actions":["write","read"]}`},
			want:      []string{`{"type":"repo","actions":["write"]}`},
		},
		"several objects, duplicates listed once": {
			requested: []string{`{"type":"pay","creditor":"DE1"}`, `{"type":"repo","actions":["read"],"name":"repo:org/x"}`, `{ "type" : "pay", "creditor" : "DE1" }`},
			parent:    []string{repo, pay},
			want: []string{
				`{"type":"pay","creditor":"DE1","limit":{"amount":100,"currency":"EUR"}}`,
				`{"type":"repo","actions":["read"],"name":"repo:org/x"}`,
			},
		},
		"literals and order kept, no HTML escaping": {
			requested: []string{`{"type":"t","n":1.50,"s":"<a&b>"}`}, parent: []string{`{"type":"t","s":"<*>","n":2}`},
			want: []string{`{"type":"t","n":1.50,"s":"<a&b>"}`},
		},
		"different type": {
			requested: []string{`{"type":"payment"}`}, parent: []string{repo}, limit: LimitDetails,
			msg: `authorization_details[0] has type "payment", which the parent does not grant`,
		},
		"not covered names the reason": {
			requested: []string{`{"type":"repo","name":"repo:other/x"}`}, parent: []string{repo}, limit: LimitDetails,
			msg: `authorization_details[0] of type "repo" is not covered by the parent's: name "repo:other/x" is not covered by the parent's "repo:org/*"`,
		},
		"second object refused": {
			requested: []string{`{"type":"repo"}`, `{"type":"pay","limit":{"amount":101}}`}, parent: []string{repo, pay}, limit: LimitDetails,
			msg: "authorization_details[1] of type \"pay\" is not covered by the parent's: limit.amount 101 exceeds the parent's 100",
		},
		"field the parent lacks": {
			requested: []string{`{"type":"repo","admin":true}`}, parent: []string{repo}, limit: LimitDetails, msg: "the parent does not grant admin",
		},
		"no parent details": {
			requested: []string{`{"type":"repo"}`}, parent: nil, limit: LimitDetails, msg: "which the parent does not grant",
		},
		"malformed requested": {
			requested: []string{`{"actions":[]}`}, parent: []string{repo}, limit: LimitDetails, msg: `authorization_details[0] has no "type"`,
		},
		"too many requested": {
			requested: slicesRepeat(`{"type":"repo"}`, 17), parent: []string{repo}, limit: LimitDetails, msg: "17 objects",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NarrowDetails(raws(tt.requested...), raws(tt.parent...))
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if diff := cmp.Diff(tt.want, strs(got)); diff != "" {
				t.Errorf("NarrowDetails() (-want +got):\n%s", diff)
			}
			for _, e := range got {
				if !anyCovers(raws(tt.parent...), e) {
					t.Errorf("effective %s is covered by no parent object", e)
				}
			}
		})
	}
	t.Run("malformed parent is not the client's error", func(t *testing.T) {
		_, err := NarrowDetails(nil, raws(`{"type":1}`))
		var ne *NarrowError
		if err == nil || errors.As(err, &ne) {
			t.Fatalf("err = %v, want a plain error", err)
		}
	})
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func anyCovers(parent []json.RawMessage, c json.RawMessage) bool {
	for _, p := range parent {
		if ok, _ := Covers(p, c); ok {
			return true
		}
	}
	return false
}

func TestNarrowParseDetails(t *testing.T) {
	deep := func(n int) string { // one object whose field nests n-1 arrays: n levels in all
		return `{"type":"t","a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}`
	}
	big := `[{"type":"t","s":"` + strings.Repeat("x", MaxDetailsBytes) + `"}]`
	tests := map[string]struct {
		raw        string
		want       []string
		limit, msg string
	}{
		"compacted": {
			raw:  " [ {\"type\" : \"repo\", \"actions\" : [ \"read\" ]},\n{\"type\":\"pay\",\"amount\":1.50} ] ",
			want: []string{`{"type":"repo","actions":["read"]}`, `{"type":"pay","amount":1.50}`},
		},
		"empty array":         {raw: `[]`, want: []string{}},
		"sixteen objects":     {raw: "[" + strings.Join(slicesRepeat(`{"type":"t"}`, 16), ",") + "]", want: slicesRepeat(`{"type":"t"}`, 16)},
		"seventeen objects":   {raw: "[" + strings.Join(slicesRepeat(`{"type":"t"}`, 17), ",") + "]", limit: LimitDetails, msg: "has 17 objects, more than the limit of 16"},
		"eight levels":        {raw: "[" + deep(8) + "]", want: []string{deep(8)}},
		"nine levels":         {raw: "[" + deep(9) + "]", limit: LimitDetails, msg: "nested more than 8 levels deep"},
		"too big":             {raw: big, limit: LimitDetails, msg: "more than the limit of 16384"},
		"not an array":        {raw: `{"type":"t"}`, limit: LimitDetails, msg: "not a JSON array"},
		"null":                {raw: `null`, limit: LimitDetails, msg: "not a JSON array"},
		"empty":               {raw: ``, limit: LimitDetails, msg: "not a JSON array"},
		"malformed":           {raw: `[{"type":"t"}`, limit: LimitDetails, msg: "not a JSON array"},
		"element not object":  {raw: `[{"type":"t"},"x"]`, limit: LimitDetails, msg: "authorization_details[1] is a string, not an object"},
		"no type":             {raw: `[{"actions":["read"]}]`, limit: LimitDetails, msg: `has no "type"`},
		"type not a string":   {raw: `[{"type":1}]`, limit: LimitDetails, msg: `has no "type"`},
		"empty type":          {raw: `[{"type":""}]`, limit: LimitDetails, msg: `has no "type"`},
		"duplicate member":    {raw: `[{"type":"a","type":"b"}]`, limit: LimitDetails, msg: `duplicate member "type"`},
		"invalid UTF-8":       {raw: "[{\"type\":\"\xc3\"}]", limit: LimitDetails, msg: "not valid UTF-8"},
		"huge exponent":       {raw: `[{"type":"t","n":1e2000000000}]`, limit: LimitDetails, msg: "out of range"},
		"unicode kept as is":  {raw: `[{"type":"t","s":"ü\u00fc"}]`, want: []string{`{"type":"t","s":"ü\u00fc"}`}},
		"nested dup refused":  {raw: `[{"type":"t","o":{"a":1,"a":1}}]`, limit: LimitDetails, msg: "duplicate member"},
		"trailing garbage":    {raw: `[{"type":"t"}] x`, limit: LimitDetails, msg: "not a JSON array"},
		"leading whitespace":  {raw: "\n\t[]", want: []string{}},
		"type may be unicode": {raw: `[{"type":"zahlung-ü"}]`, want: []string{`{"type":"zahlung-ü"}`}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseDetails(tt.raw)
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if diff := cmp.Diff(tt.want, strs(got)); diff != "" {
				t.Errorf("ParseDetails() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNarrowBudget(t *testing.T) {
	parent := map[string]int64{"requests": 100, "tokens": 5000}
	tests := map[string]struct {
		requested, parent map[string]int64
		want              map[string]int64
		limit, msg        string
	}{
		"empty inherits copy":    {parent: parent, want: map[string]int64{"requests": 100, "tokens": 5000}},
		"lower and inherit":      {requested: map[string]int64{"requests": 10}, parent: parent, want: map[string]int64{"requests": 10, "tokens": 5000}},
		"equal":                  {requested: map[string]int64{"requests": 100, "tokens": 5000}, parent: parent, want: parent},
		"zero allowed":           {requested: map[string]int64{"tokens": 0}, parent: parent, want: map[string]int64{"requests": 100, "tokens": 0}},
		"nil parent":             {want: map[string]int64{}},
		"over":                   {requested: map[string]int64{"requests": 101}, parent: parent, limit: LimitBudget, msg: `budget "requests" of 101 exceeds the parent (100)`},
		"limit the parent lacks": {requested: map[string]int64{"dollars": 1}, parent: parent, want: map[string]int64{"requests": 100, "tokens": 5000, "dollars": 1}},
		"negative":               {requested: map[string]int64{"requests": -1}, parent: parent, limit: LimitBudget, msg: `budget "requests" is negative`},
		"first error, by name":   {requested: map[string]int64{"b": 2, "a": 2}, parent: map[string]int64{"a": 1, "b": 1}, limit: LimitBudget, msg: `budget "a"`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NarrowBudget(tt.requested, tt.parent, "the parent")
			checkNarrowErr(t, err, tt.limit, tt.msg)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("NarrowBudget() (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("result is a copy", func(t *testing.T) {
		p := map[string]int64{"requests": 1}
		got, _ := NarrowBudget(nil, p, "the parent")
		got["requests"] = 99
		if p["requests"] != 1 {
			t.Fatal("NarrowBudget returned the parent's map")
		}
	})
}

func TestNarrowErrorIsClipped(t *testing.T) {
	long := strings.Repeat("ü", 300)
	_, err := NarrowScopes([]string{"x"}, []string{long})
	var ne *NarrowError
	if !errors.As(err, &ne) || !utf8Valid(ne.Msg) || len(ne.Msg) > 200 {
		t.Fatalf("err = %v", err)
	}
	if ne.Error() != ne.Msg {
		t.Errorf("Error() = %q, want Msg", ne.Error())
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// genValue makes a random JSON value from a small alphabet, so that coverage happens often.
func genValue(r *rand.Rand, depth int) any {
	k := r.IntN(6)
	if depth >= 4 && k >= 4 {
		k = r.IntN(4)
	}
	switch k {
	case 0:
		return nil
	case 1:
		return r.IntN(2) == 0
	case 2:
		return genNumber(r)
	case 3:
		return genString(r, true)
	case 4:
		n := r.IntN(4)
		a := make([]any, n)
		for i := range a {
			a[i] = genValue(r, depth+1)
		}
		return a
	}
	return genObject(r, depth+1)
}

var fieldNames = []string{"a", "b", "c", "d"}

func genObject(r *rand.Rand, depth int) map[string]any {
	o := map[string]any{}
	for _, f := range fieldNames {
		if r.IntN(2) == 0 {
			o[f] = genValue(r, depth)
		}
	}
	return o
}

// genNumber writes numbers in several equivalent forms.
func genNumber(r *rand.Rand) json.Number {
	v := r.IntN(21) - 10
	switch r.IntN(4) {
	case 0:
		return json.Number(strconv.Itoa(v))
	case 1:
		return json.Number(strconv.Itoa(v) + ".0")
	case 2:
		return json.Number(strconv.Itoa(v*10) + "e-1")
	}
	return json.Number(fmt.Sprintf("%d.%d", v, r.IntN(10)))
}

func genString(r *rand.Rand, globs bool) string {
	alpha := "ab/"
	if globs {
		alpha = "ab/**"
	}
	var b strings.Builder
	for range r.IntN(5) {
		b.WriteByte(alpha[r.IntN(len(alpha))])
	}
	return b.String()
}

// narrowValue makes a value the rule says v covers: fields and elements dropped, numbers
// lowered, stars replaced by narrower text.
func narrowValue(r *rand.Rand, v any) any {
	switch x := v.(type) {
	case json.Number:
		if r.IntN(2) == 0 {
			return x
		}
		f, _ := x.Float64()
		return json.Number(strconv.FormatFloat(f-float64(r.IntN(5))-0.5, 'f', -1, 64))
	case string:
		if !strings.Contains(x, "*") {
			return x
		}
		var b strings.Builder
		for _, c := range x {
			if c == '*' {
				b.WriteString(genString(r, true))
			} else {
				b.WriteRune(c)
			}
		}
		return b.String()
	case []any:
		var out []any
		for range r.IntN(len(x) + 1) {
			out = append(out, narrowValue(r, x[r.IntN(len(x))]))
		}
		if out == nil {
			out = []any{}
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if r.IntN(3) > 0 {
				out[k] = narrowValue(r, e)
			}
		}
		return out
	}
	return v
}

func maybeMutate(r *rand.Rand, v any) any {
	if r.IntN(2) == 0 {
		return v
	}
	return mutate(r, v)
}

// mutate replaces one value somewhere in v (maybe v itself) by a random one.
func mutate(r *rand.Rand, v any) any {
	switch x := v.(type) {
	case []any:
		if len(x) > 0 && r.IntN(3) > 0 {
			i := r.IntN(len(x))
			x[i] = mutate(r, x[i])
			return x
		}
	case map[string]any:
		if len(x) > 0 && r.IntN(3) > 0 {
			for k := range x {
				x[k] = mutate(r, x[k])
				return x
			}
		}
		x[fieldNames[r.IntN(len(fieldNames))]] = genValue(r, 3)
		return x
	}
	return genValue(r, 3)
}

func detail(t *testing.T, o map[string]any) json.RawMessage {
	t.Helper()
	o["type"] = "t"
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCoverProperties checks the covering rule as a partial order on random (seeded) objects:
// reflexive, transitive, and covering whatever narrowValue makes; NarrowDetails's effective
// object is covered by the parent and carries every field of the request.
func TestCoverProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var chains, covered int
	const narrowed = 1000 // the chains case 0 makes
	for i := range 3000 {
		p := genObject(r, 1)
		var c, g map[string]any
		switch i % 3 {
		case 0: // chains of narrowings: always covered
			c = narrowValue(r, p).(map[string]any)
			g = narrowValue(r, c).(map[string]any)
		case 1: // narrowings with one value changed at random: often covered, often not
			c = maybeMutate(r, narrowValue(r, p)).(map[string]any)
			g = maybeMutate(r, narrowValue(r, c)).(map[string]any)
		default: // independent objects: coverage by chance
			c, g = genObject(r, 1), genObject(r, 1)
		}
		pr, cr, gr := detail(t, p), detail(t, c), detail(t, g)
		for _, x := range []json.RawMessage{pr, cr, gr} {
			if ok, why := Covers(x, x); !ok {
				t.Fatalf("not reflexive: %s: %s", x, why)
			}
		}
		pc, why := Covers(pr, cr)
		cg, _ := Covers(cr, gr)
		if i%3 == 0 && (!pc || !cg) {
			t.Fatalf("a narrowing is not covered:\nP %s\nC %s\nG %s\n%s", pr, cr, gr, why)
		}
		if pc && cg {
			chains++
			if ok, why := Covers(pr, gr); !ok {
				t.Fatalf("not transitive:\nP %s\nC %s\nG %s\n%s", pr, cr, gr, why)
			}
		}
		if pc {
			covered++
			eff, err := NarrowDetails(raws(string(cr)), raws(string(pr)))
			if err != nil {
				t.Fatalf("Covers but NarrowDetails: %v\nP %s\nC %s", err, pr, cr)
			}
			if ok, why := Covers(pr, eff[0]); !ok {
				t.Fatalf("effective not covered: %s\nP %s\nC %s\nE %s", why, pr, cr, eff[0])
			}
			var e map[string]any
			if err := json.Unmarshal(eff[0], &e); err != nil {
				t.Fatal(err)
			}
			for k := range c {
				if _, ok := e[k]; !ok {
					t.Fatalf("effective lost field %q: %s", k, eff[0])
				}
			}
		} else if _, err := NarrowDetails(raws(string(cr)), raws(string(pr))); err == nil {
			t.Fatalf("not covered but NarrowDetails succeeded:\nP %s\nC %s", pr, cr)
		}
	}
	if chains < narrowed+200 || covered < narrowed+400 {
		t.Fatalf("only %d chains, %d covered pairs: the generator is too weak", chains, covered)
	}
	t.Logf("%d transitive chains, %d covered pairs", chains, covered)
}

// TestCoversBudget: a pathological pair of arrays (3000 × 3000 comparisons) is refused instead
// of compared.
func TestCoversBudget(t *testing.T) {
	var p, c strings.Builder
	p.WriteString(`{"type":"t","a":[`)
	c.WriteString(`{"type":"t","a":[`)
	for i := range 3000 {
		if i > 0 {
			p.WriteByte(',')
			c.WriteByte(',')
		}
		p.WriteString(`[1]`)
		c.WriteString(`[2]`)
	}
	p.WriteString(`,[2]]}`) // every child element is covered only by the last parent element
	c.WriteString(`]}`)
	ok, why := Covers(json.RawMessage(p.String()), json.RawMessage(c.String()))
	if ok || !strings.Contains(why, "too complex") {
		t.Fatalf("Covers() = %v, %q; want refused as too complex", ok, why)
	}
}

func FuzzNarrowDetails(f *testing.F) {
	f.Add(`[{"type":"repo","actions":["read","write"],"name":"repo:org/*"}]`, `[{"type":"repo","actions":["read"]}]`)
	f.Add(`[{"type":"pay","limit":{"amount":100,"currency":"EUR"}}]`, `[{"type":"pay","limit":{"amount":1e1}}]`)
	f.Add(`[{"type":"a","x":[{"y":"*"},{"y":[1,2]}]}]`, `[{"type":"a","x":[{"y":[0]},{"y":"q*"}]}]`)
	f.Add(`{"type":"t","n":-0.0}`, `{"type":"t","n":0}`)
	f.Add(`[{"type":"t","s":"**a*"}]`, `[{"type":"t","s":"b*aa"}]`)
	f.Fuzz(func(t *testing.T, parentJSON, childJSON string) {
		_, _ = ParseDetails(parentJSON)
		parent, child := fuzzDetails(parentJSON), fuzzDetails(childJSON)
		eff, err := NarrowDetails(child, parent)
		for _, p := range parent {
			for _, c := range child {
				Covers(p, c)
			}
		}
		if err != nil {
			return
		}
		if len(child) > 0 && len(eff) > len(child) {
			t.Fatalf("%d effective objects for %d requested", len(eff), len(child))
		}
		for _, e := range eff {
			if !json.Valid(e) {
				t.Fatalf("effective %q is not JSON", e)
			}
			if !anyCovers(parent, e) {
				t.Fatalf("effective %s is covered by no parent object in %s", e, parentJSON)
			}
		}
	})
}

// fuzzDetails reads a fuzz input as an array of objects when it is one, else as one object.
func fuzzDetails(s string) []json.RawMessage {
	var items []json.RawMessage
	if err := json.Unmarshal([]byte(s), &items); err == nil {
		return items
	}
	return []json.RawMessage{json.RawMessage(s)}
}

// TestNarrowDetailsKeepsOtherTypes: asking for one type's details never drops another type's
// constraints (the proxy enforces them on request bodies).
func TestNarrowDetailsKeepsOtherTypes(t *testing.T) {
	parent := []json.RawMessage{
		json.RawMessage(`{"type":"resend","recipient_domains":["example.com"]}`),
		json.RawMessage(`{"type":"ahrefs","targets":["*"]}`),
	}
	got, err := NarrowDetails([]json.RawMessage{json.RawMessage(`{"type":"ahrefs"}`)}, parent)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, d := range got {
		var o struct{ Type string }
		json.Unmarshal(d, &o)
		types = append(types, o.Type)
	}
	if len(got) != 2 || types[0] != "ahrefs" || types[1] != "resend" || string(got[1]) != string(parent[0]) {
		t.Fatalf("NarrowDetails = %s, want the ahrefs object and the parent's resend object kept", got)
	}
}
