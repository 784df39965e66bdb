package didkey

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/go-cmp/cmp"
	"github.com/mr-tron/base58"
)

func readVector(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile("../testdata/vectors/" + name)
	if err != nil {
		t.Fatalf("reading vector: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
}

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64url %q: %v", s, err)
	}
	return b
}

type jwkJSON struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
	D   string `json:"d,omitempty"`
}

// TestEd25519Vectors checks every Ed25519 did:key in the W3C test vector file,
// both the upstream file itself and the entries derived from it.
func TestEd25519Vectors(t *testing.T) {
	var v struct {
		Derived []struct {
			DID          string  `json:"did"`
			PublicKeyHex string  `json:"ed25519_public_key_hex"`
			JWK          jwkJSON `json:"public_key_jwk"`
		} `json:"derived"`
		Raw map[string]struct {
			Seed string `json:"seed"`
			VKP  struct {
				ID              string   `json:"id"`
				PublicKeyBase58 string   `json:"publicKeyBase58"`
				PublicKeyJwk    *jwkJSON `json:"publicKeyJwk"`
			} `json:"verificationKeyPair"`
		} `json:"raw_test_vector_file"`
	}
	readVector(t, "did-key-ed25519.json", &v)
	if len(v.Raw) != 5 || len(v.Derived) != 5 {
		t.Fatalf("vector file has %d raw and %d derived entries, want 5 and 5", len(v.Raw), len(v.Derived))
	}

	for did, e := range v.Raw {
		t.Run("raw/"+did, func(t *testing.T) {
			seed, err := hex.DecodeString(e.Seed)
			if err != nil {
				t.Fatal(err)
			}
			want := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
			switch {
			case e.VKP.PublicKeyBase58 != "":
				b, err := base58.Decode(e.VKP.PublicKeyBase58)
				if err != nil || !bytes.Equal(b, want) {
					t.Fatalf("vector inconsistent: publicKeyBase58 does not match seed")
				}
			case e.VKP.PublicKeyJwk != nil:
				if !bytes.Equal(b64(t, e.VKP.PublicKeyJwk.X), want) {
					t.Fatalf("vector inconsistent: publicKeyJwk.x does not match seed")
				}
			default:
				t.Fatal("vector has neither publicKeyBase58 nor publicKeyJwk")
			}
			checkEd25519DID(t, did, want)
			// The verification method id, in either the relative or the full form.
			frag := e.VKP.ID[strings.Index(e.VKP.ID, "#"):]
			got, err := Parse(did + frag)
			if err != nil {
				t.Fatalf("Parse(%q): %v", did+frag, err)
			}
			if !want.Equal(got) {
				t.Errorf("Parse(verification method id) returned a different key")
			}
		})
	}
	for _, e := range v.Derived {
		t.Run("derived/"+e.DID, func(t *testing.T) {
			want, err := hex.DecodeString(e.PublicKeyHex)
			if err != nil {
				t.Fatal(err)
			}
			checkEd25519DID(t, e.DID, want)
			jwk, err := JWK(ed25519.PublicKey(want))
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(jwk)
			if err != nil {
				t.Fatal(err)
			}
			var got jwkJSON
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(e.JWK, got); diff != "" {
				t.Errorf("JWK mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func checkEd25519DID(t *testing.T, did string, want []byte) {
	t.Helper()
	got, err := Parse(did)
	if err != nil {
		t.Fatalf("Parse(%q): %v", did, err)
	}
	pub, ok := got.(ed25519.PublicKey)
	if !ok {
		t.Fatalf("Parse(%q) returned %T, want ed25519.PublicKey", did, got)
	}
	if !bytes.Equal(pub, want) {
		t.Errorf("Parse(%q) = %x, want %x", did, []byte(pub), want)
	}
	s, err := Format(pub)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	if s != did {
		t.Errorf("Format = %q, want %q", s, did)
	}
}

// TestP256Vectors checks the W3C P-256 did:key vectors.
func TestP256Vectors(t *testing.T) {
	var v struct {
		Vectors []struct {
			DID     string  `json:"did"`
			VMID    string  `json:"verification_method_id"`
			Public  jwkJSON `json:"public_key_jwk"`
			Private jwkJSON `json:"private_key_jwk"`
		} `json:"vectors"`
	}
	readVector(t, "did-key-p256.json", &v)
	if len(v.Vectors) == 0 {
		t.Fatal("no P-256 vectors")
	}
	for _, e := range v.Vectors {
		t.Run(e.DID, func(t *testing.T) {
			got, err := Parse(e.DID)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			pub, ok := got.(*ecdsa.PublicKey)
			if !ok {
				t.Fatalf("Parse returned %T, want *ecdsa.PublicKey", got)
			}
			unc, err := pub.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(unc[1:33], b64(t, e.Public.X)) || !bytes.Equal(unc[33:], b64(t, e.Public.Y)) {
				t.Errorf("Parse gave a point different from the vector's publicKeyJwk")
			}
			// The private key in the vector derives the same public key.
			priv, err := ecdh.P256().NewPrivateKey(b64(t, e.Private.D))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(priv.PublicKey().Bytes(), unc) {
				t.Errorf("vector's d does not derive its public key")
			}
			s, err := Format(pub)
			if err != nil || s != e.DID {
				t.Errorf("Format = %q, %v; want %q", s, err, e.DID)
			}
			if _, err := Parse(e.DID + e.VMID); err != nil {
				t.Errorf("Parse(verification method id): %v", err)
			}

			var jwk jose.JSONWebKey
			pubJSON, _ := json.Marshal(e.Public)
			if err := jwk.UnmarshalJSON(pubJSON); err != nil {
				t.Fatal(err)
			}
			if s, err := FromJWK(jwk); err != nil || s != e.DID {
				t.Errorf("FromJWK = %q, %v; want %q", s, err, e.DID)
			}
			var privJWK jose.JSONWebKey
			privJSON, _ := json.Marshal(e.Private)
			if err := privJWK.UnmarshalJSON(privJSON); err != nil {
				t.Fatal(err)
			}
			if _, err := FromJWK(privJWK); !errors.Is(err, ErrInvalid) {
				t.Errorf("FromJWK(private JWK) error = %v, want ErrInvalid", err)
			}

			out, err := JWK(pub)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(out)
			var gotJWK jwkJSON
			_ = json.Unmarshal(b, &gotJWK)
			if diff := cmp.Diff(e.Public, gotJWK); diff != "" {
				t.Errorf("JWK mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRFC8037KeyRoundTrip takes the RFC 8037 A.2 public JWK through did:key
// and back, and refuses the A.1 private JWK.
func TestRFC8037KeyRoundTrip(t *testing.T) {
	var v struct {
		Private json.RawMessage `json:"A.1_private_key_jwk"`
		Public  json.RawMessage `json:"A.2_public_key_jwk"`
		PubHex  string          `json:"A.1_public_key_hex"`
	}
	readVector(t, "rfc8037-ed25519.json", &v)

	var pubJWK jose.JSONWebKey
	if err := pubJWK.UnmarshalJSON(v.Public); err != nil {
		t.Fatal(err)
	}
	did, err := FromJWK(pubJWK)
	if err != nil {
		t.Fatalf("FromJWK: %v", err)
	}
	pub, err := Parse(did)
	if err != nil {
		t.Fatalf("Parse(%q): %v", did, err)
	}
	wantBytes, _ := hex.DecodeString(strings.ReplaceAll(v.PubHex, " ", ""))
	if !bytes.Equal(pub.(ed25519.PublicKey), wantBytes) {
		t.Errorf("key changed on the round trip")
	}
	back, err := JWK(pub)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(back)
	var got, want map[string]any
	_ = json.Unmarshal(b, &got)
	_ = json.Unmarshal(v.Public, &want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JWK round trip mismatch (-want +got):\n%s", diff)
	}

	var privJWK jose.JSONWebKey
	if err := privJWK.UnmarshalJSON(v.Private); err != nil {
		t.Fatal(err)
	}
	if _, err := FromJWK(privJWK); !errors.Is(err, ErrInvalid) {
		t.Errorf("FromJWK(A.1 private JWK) error = %v, want ErrInvalid", err)
	}
}

func didOf(raw ...[]byte) string {
	return "did:key:z" + base58.Encode(bytes.Join(raw, nil))
}

func rep(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func TestParseRejects(t *testing.T) {
	const good = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
	goodEd := b64(t, "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik")
	edPrefix := []byte{0xed, 0x01}
	p256Prefix := []byte{0x80, 0x24}
	offCurveY := make([]byte, 32)
	offCurveY[0] = 2
	nonCanonicalY := append(rep(0xff, 31), 0x7f)
	nonCanonicalY[0] = 0xee // p + 1
	offCurveX := make([]byte, 33)
	offCurveX[0], offCurveX[32] = 2, 1

	tests := map[string]struct {
		in   string
		want string // a part of the message that says what was wrong
	}{
		"empty":                   {"", `does not start with "did:key:"`},
		"other method":            {"did:web:example.com", `does not start with "did:key:"`},
		"upper-case method":       {"DID:KEY:" + good[8:], `does not start with`},
		"no key":                  {"did:key:", "no key"},
		"base64 multibase":        {"did:key:mAQID", "multibase prefix 'm'"},
		"base58flickr multibase":  {"did:key:Z6Mk", "multibase prefix 'Z'"},
		"only multibase prefix":   {"did:key:z", "not valid base58btc"},
		"not base58":              {"did:key:z0OIl", "not valid base58btc"},
		"path":                    {good + "/path", "not valid base58btc"},
		"query":                   {good + "?service=x", "not valid base58btc"},
		"trailing space":          {good + " ", "not valid base58btc"},
		"other fragment":          {good + "#key-1", "fragment must repeat the key"},
		"empty fragment":          {good + "#", "fragment must repeat the key"},
		"fragment of another key": {good + "#z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG", "fragment must repeat the key"},
		"double fragment":         {good + "#" + good[8:] + "#" + good[8:], "fragment must repeat the key"},
		"too long":                {"did:key:z" + strings.Repeat("1", 300), "more than any supported key needs"},
		"rsa multicodec":          {didOf([]byte{0x85, 0x24}, rep(1, 40)), "unsupported multicodec 0x1205: only Ed25519 (0xed01) and P-256 (0x1200) are supported"},
		"secp256k1 multicodec":    {didOf([]byte{0xe7, 0x01}, rep(2, 33)), "unsupported multicodec 0xe7"},
		"x25519 multicodec":       {didOf([]byte{0xec, 0x01}, rep(2, 32)), "unsupported multicodec 0xec"},
		"p384 multicodec":         {didOf([]byte{0x81, 0x24}, rep(2, 49)), "unsupported multicodec 0x1201"},
		"bad varint":              {didOf(rep(0xff, 11)), "not a valid varint"},
		"truncated varint":        {didOf([]byte{0xed}), "not a valid varint"},
		"non-minimal varint":      {didOf([]byte{0xed, 0x81, 0x00}, goodEd), "not a minimal varint"},
		"ed25519 short":           {didOf(edPrefix, goodEd[:31]), "Ed25519 key is 31 bytes, want 32"},
		"ed25519 long":            {didOf(edPrefix, goodEd, []byte{0}), "Ed25519 key is 33 bytes, want 32"},
		"ed25519 prefix only":     {didOf(edPrefix), "Ed25519 key is 0 bytes"},
		"ed25519 identity point":  {didOf(edPrefix, append([]byte{1}, make([]byte, 31)...)), "small-order point"},
		"ed25519 zero point":      {didOf(edPrefix, make([]byte, 32)), "small-order point"},
		"ed25519 order-8 point":   {didOf(edPrefix, smallOrderY[4][:]), "small-order point"},
		"ed25519 order-8 negated": {didOf(edPrefix, append(append([]byte(nil), smallOrderY[3][:31]...), smallOrderY[3][31]|0x80)), "small-order point"},
		"ed25519 non-canonical y": {didOf(edPrefix, nonCanonicalY), "not canonically encoded"},
		"ed25519 x=0 negative":    {didOf(edPrefix, append(append([]byte{1}, make([]byte, 30)...), 0x80)), "small-order point"},
		"ed25519 off curve":       {didOf(edPrefix, offCurveY), "not a point on the curve"},
		"p256 short":              {didOf(p256Prefix, rep(2, 32)), "P-256 key is 32 bytes, want a 33-byte compressed point"},
		"p256 uncompressed":       {didOf(p256Prefix, append([]byte{4}, rep(1, 64)...)), "P-256 key is 65 bytes"},
		"p256 bad prefix byte":    {didOf(p256Prefix, append([]byte{4}, rep(1, 32)...)), "not a compressed point (first byte 0x04)"},
		"p256 off curve":          {didOf(p256Prefix, offCurveX), "not a point on the curve"},
		"p256 x too big":          {didOf(p256Prefix, append([]byte{2}, rep(0xff, 32)...)), "not a point on the curve"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", tc.in, got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not match ErrInvalid", err)
			}
			if !strings.HasPrefix(err.Error(), "did:key: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestFormatRejects(t *testing.T) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)

	tests := map[string]struct {
		in   any
		want string
	}{
		"nil":                 {nil, "unsupported key type <nil>"},
		"ed25519 private":     {edPriv, "private key"},
		"ecdsa private":       {ecPriv, "private key"},
		"ed25519 short":       {ed25519.PublicKey(make([]byte, 31)), "31 bytes"},
		"ed25519 small":       {ed25519.PublicKey(make([]byte, 32)), "small-order point"},
		"p384":                {&p384.PublicKey, "not on P-256"},
		"nil ecdsa":           {(*ecdsa.PublicKey)(nil), "not on P-256"},
		"ecdsa value":         {ecPriv.PublicKey, "unsupported key type ecdsa.PublicKey"},
		"rsa":                 {&rsaKey.PublicKey, "unsupported key type *rsa.PublicKey"},
		"bytes":               {[]byte("secret"), "unsupported key type []uint8"},
		"ecdh key":            {mustECDH(t), "unsupported key type *ecdh.PublicKey"},
		"p256 no coordinates": {&ecdsa.PublicKey{Curve: elliptic.P256()}, "no coordinates"},
		"p256 off curve":      {&ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}, "not a point on the curve"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Format(tc.in)
			if err == nil {
				t.Fatalf("Format = %q, want error", got)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want ErrInvalid containing %q", err, tc.want)
			}
			if _, err := JWK(tc.in); !errors.Is(err, ErrInvalid) {
				t.Errorf("JWK error = %v, want ErrInvalid", err)
			}
		})
	}
}

func mustECDH(t *testing.T) *ecdh.PublicKey {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestFromJWKRejects(t *testing.T) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	tests := map[string]struct {
		in   jose.JSONWebKey
		want string
	}{
		"empty":           {jose.JSONWebKey{}, "no key"},
		"ed25519 private": {jose.JSONWebKey{Key: edPriv}, "private key"},
		"ecdsa private":   {jose.JSONWebKey{Key: ecPriv}, "private key"},
		"rsa private":     {jose.JSONWebKey{Key: rsaKey}, "private key"},
		"symmetric":       {jose.JSONWebKey{Key: []byte("0123456789abcdef")}, "private key"},
		"rsa public":      {jose.JSONWebKey{Key: &rsaKey.PublicKey}, "unsupported JWK key type *rsa.PublicKey"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := FromJWK(tc.in)
			if err == nil {
				t.Fatalf("FromJWK = %q, want error", got)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

// TestRoundTripRandomKeys checks the property on many fresh keys of both
// types: Format then Parse gives the same key, and Parse then Format the same
// string; it also exercises the Ed25519 on-curve check on valid points.
func TestRoundTripRandomKeys(t *testing.T) {
	for i := range 200 {
		var pub any
		if i%2 == 0 {
			pub, _, _ = ed25519.GenerateKey(rand.Reader)
		} else {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pub = &k.PublicKey
		}
		did, err := Format(pub)
		if err != nil {
			t.Fatalf("Format(%T): %v", pub, err)
		}
		got, err := Parse(did)
		if err != nil {
			t.Fatalf("Parse(%q): %v", did, err)
		}
		if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
			t.Fatalf("Parse(Format(k)) != k for %q", did)
		}
		again, err := Format(got)
		if err != nil || again != did {
			t.Fatalf("Format(Parse(%q)) = %q, %v", did, again, err)
		}
		jwk, err := JWK(got)
		if err != nil {
			t.Fatal(err)
		}
		// Through JSON, as a JWK would travel.
		b, err := jwk.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var back jose.JSONWebKey
		if err := back.UnmarshalJSON(b); err != nil {
			t.Fatal(err)
		}
		if s, err := FromJWK(back); err != nil || s != did {
			t.Fatalf("FromJWK(JWK(%q)) = %q, %v", did, s, err)
		}
	}
}
