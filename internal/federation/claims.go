package federation

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// lookupClaim finds a claim by path. A claim whose name is the whole path wins (namespaced
// claims such as "https://example.com/groups" hold slashes); otherwise "/" separates the keys of
// nested objects, as in "kubernetes.io/namespace".
func lookupClaim(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	var cur any = claims
	for _, k := range strings.Split(path, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// claimString is the value a rule's exact-claim condition compares: strings as they are, numbers
// in their shortest decimal form, booleans as true or false. Other values do not compare.
func claimString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "", false
		}
		return strconv.FormatFloat(v, 'f', -1, 64), true
	}
	return "", false
}

// describe names a claim value's JSON type for refusal details.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}
