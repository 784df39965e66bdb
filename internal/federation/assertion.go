package federation

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// maxAssertionBytes bounds an assertion: platform tokens are 1–3 KiB.
const maxAssertionBytes = 16 << 10

// assertion is a parsed, not yet verified, external JWT.
type assertion struct {
	raw      string
	alg, kid string
	claims   map[string]any // numbers are int64 when integral, else float64
	iss, sub string
	jti      string
	aud      []string
	// exp, nbf, iat are nil when absent.
	exp, nbf, iat *time.Time
}

// parseAssertion splits a compact JWS and decodes its header and claims, checking the types of
// the registered claims. It verifies nothing.
func parseAssertion(raw string) (*assertion, *Refusal) {
	if len(raw) > maxAssertionBytes {
		return nil, refuse(ReasonMalformed, "the assertion is %d bytes, more than the %d allowed", len(raw), maxAssertionBytes)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, refuse(ReasonMalformed, "the assertion is not a compact JWS: it has %d parts, not 3", len(parts))
	}
	for i, p := range parts {
		// Go's base64 decoder skips CR and LF; an assertion holds none.
		if !isBase64URL(p) {
			return nil, refuse(ReasonMalformed, "part %d of the assertion is not base64url without padding", i+1)
		}
	}
	a := &assertion{raw: raw}
	header, err := decodeObject(parts[0])
	if err != nil {
		return nil, refuse(ReasonMalformed, "the JWS header is not a JSON object: %v", err)
	}
	var ok bool
	if a.alg, ok = header["alg"].(string); !ok {
		return nil, refuse(ReasonMalformed, "the JWS header has no alg string")
	}
	// No platform token marks a header parameter critical, and the Ed25519 path verifies
	// without go-jose, so crit is refused outright rather than half understood.
	if _, present := header["crit"]; present {
		return nil, refuse(ReasonMalformed, "the JWS header has crit parameters, which are not supported")
	}
	if kid, present := header["kid"]; present {
		if a.kid, ok = kid.(string); !ok {
			return nil, refuse(ReasonMalformed, "the JWS header kid is not a string")
		}
	}
	if a.claims, err = decodeObject(parts[1]); err != nil {
		return nil, refuse(ReasonMalformed, "the JWS payload is not a JSON object of claims: %v", err)
	}
	if ref := a.readRegistered(); ref != nil {
		return nil, ref
	}
	return a, nil
}

func isBase64URL(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// decodeObject decodes one base64url JSON object, and nothing after it.
func decodeObject(part string) (map[string]any, error) {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return nil, errors.New("bad base64url")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, errors.New("bad JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	if err := normalizeNumbers(obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// normalizeNumbers turns json.Numbers into int64 (integral and in range) or float64, the types
// CEL compares, in place.
func normalizeNumbers(v any) error {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			n, err := normalizeValue(e)
			if err != nil {
				return err
			}
			v[k] = n
		}
	case []any:
		for i, e := range v {
			n, err := normalizeValue(e)
			if err != nil {
				return err
			}
			v[i] = n
		}
	}
	return nil
}

func normalizeValue(v any) (any, error) {
	n, ok := v.(json.Number)
	if !ok {
		return v, normalizeNumbers(v)
	}
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return i, nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, errors.New("number out of range")
	}
	return f, nil
}

func (a *assertion) readRegistered() *Refusal {
	strs := []struct {
		name string
		dst  *string
	}{{"iss", &a.iss}, {"sub", &a.sub}, {"jti", &a.jti}}
	for _, c := range strs {
		if v, present := a.claims[c.name]; present {
			s, ok := v.(string)
			if !ok {
				return refuse(ReasonMalformed, "the %s claim is not a string", c.name)
			}
			*c.dst = s
		}
	}
	switch aud := a.claims["aud"].(type) {
	case nil:
	case string:
		a.aud = []string{aud}
	case []any:
		for _, e := range aud {
			s, ok := e.(string)
			if !ok {
				return refuse(ReasonMalformed, "the aud claim is not a string or an array of strings")
			}
			a.aud = append(a.aud, s)
		}
	default:
		return refuse(ReasonMalformed, "the aud claim is not a string or an array of strings")
	}
	dates := []struct {
		name string
		dst  **time.Time
	}{{"exp", &a.exp}, {"nbf", &a.nbf}, {"iat", &a.iat}}
	for _, c := range dates {
		v, present := a.claims[c.name]
		if !present {
			continue
		}
		t, ok := numericDate(v)
		if !ok {
			return refuse(ReasonMalformed, "the %s claim is not a NumericDate (seconds since 1970)", c.name)
		}
		*c.dst = &t
	}
	return nil
}

// maxNumericDate is the end of year 9999: later dates are nonsense, and time.Unix would overflow
// far beyond.
const maxNumericDate = 253402300799

func numericDate(v any) (time.Time, bool) {
	switch n := v.(type) {
	case int64:
		if n < 0 || n > maxNumericDate {
			return time.Time{}, false
		}
		return time.Unix(n, 0), true
	case float64:
		if math.IsNaN(n) || n < 0 || n > maxNumericDate {
			return time.Time{}, false
		}
		sec, frac := math.Modf(n)
		return time.Unix(int64(sec), int64(frac*1e9)), true
	}
	return time.Time{}, false
}
