package federation

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"testing"

	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

// FuzzParseJWKS feeds arbitrary documents to the JWK set parser, which reads what an issuer's
// jwks_uri serves (and pinned sets and SPIFFE bundles): it never panics, and every key it
// returns is a public signing key of a kind the verifier accepts.
func FuzzParseJWKS(f *testing.F) {
	var keys []*oidctest.Key
	for _, alg := range []string{"RS256", "ES256", "ES384", "EdDSA"} {
		keys = append(keys, oidctest.NewKey(f, alg))
	}
	for _, seed := range []string{
		string(oidctest.KeySet(keys...)),
		`{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}],"spiffe_sequence":1}`,
		`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`,
		`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`,
		`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}`,
		`{"keys":null}`, `{}`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseJWKS(data)
		if err != nil {
			return
		}
		for _, k := range keys {
			switch pub := k.pub.(type) {
			case *rsa.PublicKey:
				if pub.N.BitLen() < 2048 {
					t.Fatalf("an RSA key of %d bits passed", pub.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
					t.Fatalf("an EC key on %s passed", pub.Curve.Params().Name)
				}
			case ed25519.PublicKey:
				if len(pub) != ed25519.PublicKeySize {
					t.Fatalf("an Ed25519 key of %d bytes passed", len(pub))
				}
			default:
				t.Fatalf("a key of type %T passed", pub)
			}
		}
	})
}
