package federation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// algEd25519 is RFC 9864's fully-specified name for EdDSA with Ed25519. go-jose does not know
// it, so it is verified with crypto/ed25519 directly (as internal/jwsverify does).
const algEd25519 = "Ed25519"

// algs are the accepted signature algorithms. none and HMAC never are: a shared secret cannot
// come from an issuer's public JWKS, and HS256 keyed with the public key is a known forgery.
var algs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", algEd25519}

const minRSABits = 2048

// key is a usable public signing key of an issuer.
type key struct {
	kid string
	alg string // the JWK's alg member; "" when absent
	pub crypto.PublicKey
}

// parseJWKS returns the usable public signing keys of a JWK set (RFC 7517 §5), or of a SPIFFE
// trust bundle in JWKS form: keys for another use (x509-svid, enc), symmetric keys, keys with
// private material, RSA keys under 2048 bits and key types go-jose does not know are skipped,
// as §5 asks for keys that are not understood. Unknown top-level members (spiffe_sequence,
// spiffe_refresh_hint) are ignored. An error means the document is not a JWK set at all.
func parseJWKS(data []byte) ([]key, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWK set: %w", err)
	}
	if set.Keys == nil {
		return nil, errors.New("not a JWK set: no keys member")
	}
	var keys []key
	for _, raw := range set.Keys {
		if k, ok := parseJWK(raw); ok {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func parseJWK(raw json.RawMessage) (key, bool) {
	var m struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		// Private members: a published key set must never hold them; skipping such a key (not
		// parsing it) keeps go-jose's private-key parser off untrusted input.
		D    json.RawMessage `json:"d"`
		P    json.RawMessage `json:"p"`
		Q    json.RawMessage `json:"q"`
		DP   json.RawMessage `json:"dp"`
		DQ   json.RawMessage `json:"dq"`
		QI   json.RawMessage `json:"qi"`
		K    json.RawMessage `json:"k"`
		Priv json.RawMessage `json:"priv"`
	}
	if json.Unmarshal(raw, &m) != nil {
		return key{}, false
	}
	if m.Kty == "oct" || m.D != nil || m.P != nil || m.Q != nil || m.DP != nil || m.DQ != nil || m.QI != nil || m.K != nil || m.Priv != nil {
		return key{}, false
	}
	if m.Use != "" && m.Use != "sig" && m.Use != "jwt-svid" {
		return key{}, false
	}
	var jwk jose.JSONWebKey
	if jwk.UnmarshalJSON(raw) != nil || !jwk.IsPublic() || !jwk.Valid() {
		return key{}, false
	}
	switch pub := jwk.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return key{}, false
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return key{}, false
		}
	case ed25519.PublicKey:
	default:
		return key{}, false
	}
	return key{kid: jwk.KeyID, alg: jwk.Algorithm, pub: jwk.Key}, true
}

// fits reports whether k may verify a signature made with alg: the key type must be the one the
// algorithm is defined for, and a key that names its algorithm only serves that one.
func (k key) fits(alg string) bool {
	if k.alg != "" && k.alg != alg && !(isEdDSA(k.alg) && isEdDSA(alg)) {
		return false
	}
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return alg == "ES256" && pub.Curve == elliptic.P256() || alg == "ES384" && pub.Curve == elliptic.P384()
	case ed25519.PublicKey:
		return isEdDSA(alg)
	}
	return false
}

func isEdDSA(alg string) bool { return alg == "EdDSA" || alg == algEd25519 }

// kind names the key's type in refusals.
func (k key) kind() string {
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", pub.N.BitLen())
	case *ecdsa.PublicKey:
		return "EC " + pub.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return "unknown"
}

func keysWithKID(keys []key, kid string) []key {
	var out []key
	for _, k := range keys {
		if k.kid == kid {
			out = append(out, k)
		}
	}
	return out
}

func keysFitting(keys []key, alg string) []key {
	var out []key
	for _, k := range keys {
		if k.fits(alg) {
			out = append(out, k)
		}
	}
	return out
}

func algAllowed(alg string) bool { return slices.Contains(algs, alg) }
