package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// Key is a signing key of a test issuer.
type Key struct {
	KID    string
	Alg    string
	Signer crypto.Signer // *rsa.PrivateKey, *ecdsa.PrivateKey or ed25519.PrivateKey
}

// NewKey generates a key for alg: RSA 2048 for RS*/PS*, P-256 for ES256, P-384 for ES384,
// Ed25519 for EdDSA and Ed25519. Its kid is random.
func NewKey(t testing.TB, alg string) *Key {
	t.Helper()
	var signer crypto.Signer
	var err error
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EdDSA", "Ed25519":
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("oidctest: no key type for alg %q", alg)
	}
	if err != nil {
		t.Fatalf("oidctest: generate %s key: %v", alg, err)
	}
	return &Key{KID: alg + "-" + randomHex(6), Alg: alg, Signer: signer}
}

// Public is the key's public JWK, with kid, alg and use sig.
func (k *Key) Public() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.Signer.Public(), KeyID: k.KID, Algorithm: k.Alg, Use: "sig"}
}

// MintOption changes how Mint signs.
type MintOption func(*minting)

type minting struct {
	key     *Key
	alg     string
	header  map[string]any
	noKID   bool
	kid     *string
	hmacKey []byte
	none    bool
}

// WithAlg signs with the issuer's first key of alg (a new key is added when there is none).
func WithAlg(alg string) MintOption { return func(m *minting) { m.alg = alg } }

// SignedBy signs with k, which need not be in the issuer's JWKS (a rotated-out or foreign key).
func SignedBy(k *Key) MintOption { return func(m *minting) { m.key = k } }

// WithKID sets the header kid, whatever key signs.
func WithKID(kid string) MintOption { return func(m *minting) { m.kid = &kid } }

// WithoutKID leaves kid out of the header.
func WithoutKID() MintOption { return func(m *minting) { m.noKID = true } }

// WithHeader sets a header parameter, e.g. typ or crit; it is applied last, so it may also
// override alg (the signature is still made with the key's algorithm).
func WithHeader(name string, value any) MintOption {
	return func(m *minting) {
		if m.header == nil {
			m.header = map[string]any{}
		}
		m.header[name] = value
	}
}

// WithHMAC forges a token MAC'd with secret under alg HS256, HS384 or HS512 — e.g. keyed with
// the bytes of the issuer's public key (the RS256→HS256 confusion attack).
func WithHMAC(alg string, secret []byte) MintOption {
	return func(m *minting) { m.alg, m.hmacKey = alg, secret }
}

// Unsigned forges a token with alg none and an empty signature.
func Unsigned() MintOption { return func(m *minting) { m.none = true } }

// Mint signs claims into a compact JWS. With no option it signs with the issuer's first key.
func (is *Issuer) Mint(claims map[string]any, opts ...MintOption) string {
	is.t.Helper()
	m := &minting{}
	for _, o := range opts {
		o(m)
	}
	if m.key == nil && m.hmacKey == nil && !m.none {
		if m.alg != "" {
			m.key = is.Key(m.alg)
		} else {
			m.key = is.Keys()[0]
		}
	}
	return mint(is.t, claims, m)
}

func mint(t testing.TB, claims map[string]any, m *minting) string {
	t.Helper()
	header := map[string]any{"typ": "JWT"}
	switch {
	case m.none:
		header["alg"] = "none"
	case m.hmacKey != nil:
		header["alg"] = m.alg
	default:
		header["alg"], header["kid"] = m.key.Alg, m.key.KID
	}
	if m.kid != nil {
		header["kid"] = *m.kid
	}
	if m.noKID {
		delete(header, "kid")
	}
	for k, v := range m.header {
		header[k] = v
	}
	input := segment(t, header) + "." + segment(t, claims)
	var sig []byte
	switch {
	case m.none:
	case m.hmacKey != nil:
		sig = macWith(t, m.alg, m.hmacKey, []byte(input))
	default:
		sig = signWith(t, m.key, []byte(input))
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func segment(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("oidctest: marshal: %v", err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var hashes = map[string]crypto.Hash{"256": crypto.SHA256, "384": crypto.SHA384, "512": crypto.SHA512}

func signWith(t testing.TB, k *Key, input []byte) []byte {
	t.Helper()
	var sig []byte
	var err error
	switch key := k.Signer.(type) {
	case ed25519.PrivateKey:
		return ed25519.Sign(key, input)
	case *rsa.PrivateKey:
		h := hashes[k.Alg[2:]]
		digest := digestOf(h, input)
		if k.Alg[0] == 'P' {
			sig, err = rsa.SignPSS(rand.Reader, key, h, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, key, h, digest)
		}
	case *ecdsa.PrivateKey:
		// JWS wants r||s, each the size of the curve (RFC 7518 §3.4), not ASN.1.
		h, size := crypto.SHA256, 32
		if key.Curve == elliptic.P384() {
			h, size = crypto.SHA384, 48
		}
		var r, s *big.Int
		if r, s, err = ecdsa.Sign(rand.Reader, key, digestOf(h, input)); err == nil {
			sig = append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...)
		}
	default:
		t.Fatalf("oidctest: cannot sign with %T", k.Signer)
	}
	if err != nil {
		t.Fatalf("oidctest: sign: %v", err)
	}
	return sig
}

func macWith(t testing.TB, alg string, secret, input []byte) []byte {
	t.Helper()
	if len(alg) != 5 || alg[:2] != "HS" {
		t.Fatalf("oidctest: %q is not an HMAC alg", alg)
	}
	h := hashes[alg[2:]]
	mac := hmac.New(h.New, secret)
	mac.Write(input)
	return mac.Sum(nil)
}

func digestOf(h crypto.Hash, input []byte) []byte {
	d := h.New()
	d.Write(input)
	return d.Sum(nil)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("oidctest: crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}
