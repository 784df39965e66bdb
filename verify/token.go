package verify

import (
	"encoding/base64"
	"encoding/json"
	"strings"
)

// compactJWS is an access token split into its parts. The payload stays encoded until the
// signature over it has been checked.
//
// The parser is deliberately small and strict rather than go-jose's general one: it runs on
// every request, where go-jose's parse alone cost about 5% of the budget of two Ed25519 checks
// (56 allocations), and a token has exactly one shape: compact serialization, base64url without
// padding, a header with alg (pinned by the caller), typ and kid, and no crit.
type compactJWS struct {
	signingInput string
	payload      string // still base64url
	header       tokenHeader
	sig          []byte
}

type tokenHeader struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

var strictB64 = base64.RawURLEncoding.Strict()

// parseCompact splits s and decodes its header and signature. Only the base64url alphabet and two
// dots are allowed (Go's decoder would skip CR and LF).
func parseCompact(s string) (*compactJWS, bool) {
	dots := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			dots++
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return nil, false
		}
	}
	if dots != 2 {
		return nil, false
	}
	h, rest, _ := strings.Cut(s, ".")
	p, sg, _ := strings.Cut(rest, ".")
	if h == "" || p == "" {
		return nil, false
	}
	hb, err := strictB64.DecodeString(h)
	if err != nil {
		return nil, false
	}
	j := &compactJWS{signingInput: s[:len(h)+1+len(p)], payload: p}
	if err := json.Unmarshal(hb, &j.header); err != nil {
		return nil, false
	}
	if j.sig, err = strictB64.DecodeString(sg); err != nil {
		return nil, false
	}
	return j, true
}

func (j *compactJWS) decodePayload() ([]byte, error) {
	return strictB64.DecodeString(j.payload)
}
