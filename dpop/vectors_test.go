package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"math/big"
	"testing"
	"time"
)

// TestRFC9449Vectors checks the three proofs published in RFC 9449: each
// verifies at its own iat, and jkt and ath recompute to the published values.
func TestRFC9449Vectors(t *testing.T) {
	var v struct {
		JKT         string `json:"jkt"`
		AccessToken string `json:"access_token"`
		ATH         string `json:"ath"`
		Proofs      map[string]struct {
			JWT     string `json:"jwt_unwrapped"`
			Payload string `json:"decoded_payload_json"`
		} `json:"proofs"`
	}
	readVector(t, "rfc9449-dpop.json", &v)
	if got := AccessTokenHash(v.AccessToken); got != v.ATH {
		t.Errorf("AccessTokenHash = %q, want %q", got, v.ATH)
	}
	if len(v.Proofs) != 3 {
		t.Fatalf("got %d proofs, want 3", len(v.Proofs))
	}
	for name, p := range v.Proofs {
		t.Run(name, func(t *testing.T) {
			var pl struct {
				HTM string `json:"htm"`
				HTU string `json:"htu"`
				IAT int64  `json:"iat"`
				JTI string `json:"jti"`
				ATH string `json:"ath"`
			}
			if err := json.Unmarshal([]byte(p.Payload), &pl); err != nil {
				t.Fatal(err)
			}
			req := Request{Method: pl.HTM, URL: pl.HTU, JKT: v.JKT}
			if pl.ATH != "" {
				req.AccessToken = v.AccessToken
			}
			c := newTestChecker(func(c *Config) { c.Now = func() time.Time { return time.Unix(pl.IAT, 0) } })
			got, err := c.Check(context.Background(), p.JWT, req)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if _, ok := got.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("key type %T, want *ecdsa.PublicKey", got.PublicKey)
			}
			want := &Proof{PublicKey: got.PublicKey, JKT: v.JKT, JTI: pl.JTI, IssuedAt: time.Unix(pl.IAT, 0),
				ReplayID: v.JKT + ":" + pl.JTI, ReplayUntil: time.Unix(pl.IAT, 0).Add(2 * defaultWin)}
			if diff := diffProof(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestRFC7638Thumbprint is the RSA example of RFC 7638 §3.1.
func TestRFC7638Thumbprint(t *testing.T) {
	var v struct {
		JWK struct {
			N string `json:"n"`
			E string `json:"e"`
		} `json:"jwk"`
		Want string `json:"thumbprint_base64url"`
	}
	readVector(t, "rfc7638-jwk-thumbprint.json", &v)
	n, err := b64.DecodeString(v.JWK.N)
	if err != nil {
		t.Fatal(err)
	}
	e, err := b64.DecodeString(v.JWK.E)
	if err != nil {
		t.Fatal(err)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if got := mustThumb(t, pub); got != v.Want {
		t.Errorf("Thumbprint = %q, want %q", got, v.Want)
	}
}

// TestEd25519Thumbprints covers RFC 8037 A.3 and the thumbprints derived
// for the W3C did:key vectors.
func TestEd25519Thumbprints(t *testing.T) {
	var rfc struct {
		JWK struct {
			X string `json:"x"`
		} `json:"A.2_public_key_jwk"`
		Want string `json:"A.3_thumbprint_base64url"`
	}
	readVector(t, "rfc8037-ed25519.json", &rfc)
	var w3c struct {
		Derived []struct {
			JWK struct {
				X string `json:"x"`
			} `json:"public_key_jwk"`
			Want string `json:"jwk_thumbprint_sha256_b64url"`
		} `json:"derived"`
	}
	readVector(t, "did-key-ed25519.json", &w3c)
	cases := map[string][2]string{"RFC 8037 A.3": {rfc.JWK.X, rfc.Want}}
	for i, d := range w3c.Derived {
		cases["did:key derived "+string(rune('0'+i))] = [2]string{d.JWK.X, d.Want}
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			x, err := b64.DecodeString(c[0])
			if err != nil {
				t.Fatal(err)
			}
			if got := mustThumb(t, ed25519.PublicKey(x)); got != c[1] {
				t.Errorf("Thumbprint = %q, want %q", got, c[1])
			}
		})
	}
}

func TestThumbprintRejects(t *testing.T) {
	for name, k := range map[string]any{
		"nil":             nil,
		"short ed25519":   ed25519.PublicKey(make([]byte, 5)),
		"ed25519 private": testEdKey,
		"P-384":           &mustP384(t).PublicKey,
		"nil ecdsa":       (*ecdsa.PublicKey)(nil),
		"empty rsa":       &rsa.PublicKey{},
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := Thumbprint(k); err == nil {
				t.Errorf("Thumbprint = %q, want error", s)
			}
		})
	}
}
