package jwsverify

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"
)

func sign(_ *testing.T, key ed25519.PrivateKey, header, payload string) string {
	in := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in)))
}

func TestAlgorithms(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	tests := map[string]struct {
		header  string
		verify  ed25519.PublicKey
		parseOK bool
		okSig   bool
	}{
		"EdDSA":              {`{"alg":"EdDSA"}`, pub, true, true},
		"Ed25519 (RFC 9864)": {`{"alg":"Ed25519"}`, pub, true, true},
		"Ed25519 wrong key":  {`{"alg":"Ed25519"}`, otherPub, true, false},
		"none":               {`{"alg":"none"}`, pub, false, false},
		"HS256":              {`{"alg":"HS256"}`, pub, false, false},
		"RS256":              {`{"alg":"RS256"}`, pub, false, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			j, err := Parse(sign(t, key, tt.header, `{"a":1}`))
			if (err == nil) != tt.parseOK {
				t.Fatalf("Parse err = %v, want ok=%v", err, tt.parseOK)
			}
			if err != nil {
				return
			}
			payload, err := j.Verify(tt.verify)
			if (err == nil) != tt.okSig {
				t.Fatalf("Verify err = %v, want ok=%v", err, tt.okSig)
			}
			if err == nil && string(payload) != `{"a":1}` {
				t.Fatalf("payload = %s", payload)
			}
		})
	}
}
