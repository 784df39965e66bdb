package jwsverify

import (
	"crypto/ed25519"
	"testing"
)

// FuzzParseVerify feeds arbitrary strings to the parser of what agents sign (client assertions,
// registrations, actor tokens): it must refuse or verify, never panic, and never verify a
// signature by another key.
func FuzzParseVerify(f *testing.F) {
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	other := ed25519.NewKeyFromSeed(append(make([]byte, 31), 1))
	f.Add(sign(nil, key, `{"alg":"EdDSA","kid":"k"}`, `{"iss":"x"}`))
	f.Add(sign(nil, key, `{"alg":"Ed25519"}`, `{}`))
	f.Add(sign(nil, key, `{"alg":"ES256"}`, `{}`))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("..")
	f.Add("")
	f.Fuzz(func(t *testing.T, raw string) {
		j, err := Parse(raw)
		if err != nil {
			return
		}
		_ = j.Header()
		_ = j.UnverifiedPayload()
		_, errOther := j.Verify(other.Public())
		if _, errKey := j.Verify(key.Public()); errKey == nil && errOther == nil {
			t.Fatalf("%q verifies with two different keys", raw)
		}
	})
}
