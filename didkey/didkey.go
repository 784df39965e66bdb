// Package didkey converts between W3C did:key identifiers, Go public keys and
// public JWKs.
//
// An agent's identity in mandate is its key, written as a did:key, so the same
// key must always map to the same string and a string that is not exactly one
// key must be refused: parsing is strict (multibase 'z' only, exact lengths,
// minimal varints, canonical base58, points on the curve) and Format(Parse(s))
// gives back s. Only the two key types mandate signs with are supported:
// Ed25519 (multicodec 0xed) and P-256 (multicodec 0x1200, compressed point).
package didkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/go-jose/go-jose/v4"
	"github.com/mr-tron/base58"
)

// ErrInvalid is matched (errors.Is) by every error this package returns, so
// callers can tell "bad input" from anything else without parsing messages;
// the message itself says what was wrong.
var ErrInvalid = errors.New("did:key: invalid")

// invalidError carries the specific sentence while still matching ErrInvalid.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return "did:key: " + e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalid(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

const (
	prefix = "did:key:"

	codecEd25519 = 0xed   // ed25519-pub
	codecP256    = 0x1200 // p256-pub

	// maxLen bounds the input before base58 decoding, whose cost grows with
	// the square of the length; the longest supported DID is 57 characters,
	// twice that with the verification-method fragment.
	maxLen = 256
)

// Parse returns the public key in a did:key: an ed25519.PublicKey (multicodec
// 0xed01) or a *ecdsa.PublicKey on P-256 (multicodec 0x1200, 33-byte
// compressed point). The verification-method form "did:key:z…#z…" is accepted
// when the fragment repeats the key, since that is how DID documents name the
// key; any other fragment, path or query is refused.
func Parse(did string) (crypto.PublicKey, error) {
	if len(did) > maxLen {
		return nil, invalid("identifier is %d bytes long, more than any supported key needs", len(did))
	}
	rest, ok := strings.CutPrefix(did, prefix)
	if !ok {
		return nil, invalid("identifier does not start with %q", prefix)
	}
	if mb, frag, found := strings.Cut(rest, "#"); found {
		if frag != mb {
			return nil, invalid("fragment must repeat the key (verification method id), got a different value")
		}
		rest = mb
	}
	if rest == "" {
		return nil, invalid("identifier has no key after %q", prefix)
	}
	if rest[0] != 'z' {
		return nil, invalid("multibase prefix %q is not supported: only 'z' (base58btc) is", rest[0])
	}
	enc := rest[1:]
	raw, err := base58.Decode(enc)
	if err != nil || len(raw) == 0 {
		return nil, invalid("key is not valid base58btc")
	}
	// Re-encoding must give the same text, or two strings would name one key.
	if base58.Encode(raw) != enc {
		return nil, invalid("key is not canonical base58btc")
	}
	codec, n := binary.Uvarint(raw)
	if n <= 0 {
		return nil, invalid("multicodec prefix is not a valid varint")
	}
	if n != uvarintLen(codec) {
		return nil, invalid("multicodec prefix is not a minimal varint")
	}
	key := raw[n:]
	switch codec {
	case codecEd25519:
		return parseEd25519(key)
	case codecP256:
		return parseP256(key)
	default:
		return nil, invalid("unsupported multicodec 0x%x: only Ed25519 (0xed01) and P-256 (0x1200) are supported", codec)
	}
}

func uvarintLen(v uint64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], v)
}

func parseEd25519(key []byte) (ed25519.PublicKey, error) {
	if len(key) != ed25519.PublicKeySize {
		return nil, invalid("Ed25519 key is %d bytes, want %d", len(key), ed25519.PublicKeySize)
	}
	if err := checkEd25519Point(key); err != nil {
		return nil, err
	}
	return ed25519.PublicKey(append([]byte(nil), key...)), nil
}

func parseP256(key []byte) (*ecdsa.PublicKey, error) {
	if len(key) != 33 {
		return nil, invalid("P-256 key is %d bytes, want a 33-byte compressed point", len(key))
	}
	if key[0] != 2 && key[0] != 3 {
		return nil, invalid("P-256 key is not a compressed point (first byte 0x%02x)", key[0])
	}
	x, y := elliptic.UnmarshalCompressed(elliptic.P256(), key)
	if x == nil {
		return nil, invalid("P-256 key is not a point on the curve")
	}
	// Build the key through the validating constructor rather than by
	// filling X and Y, so it is usable with crypto/ecdh as well.
	unc := make([]byte, 65)
	unc[0] = 4
	x.FillBytes(unc[1:33])
	y.FillBytes(unc[33:])
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), unc)
	if err != nil {
		return nil, invalid("P-256 key is not a point on the curve")
	}
	return pub, nil
}

// Format returns the did:key of an ed25519.PublicKey or a P-256
// *ecdsa.PublicKey. Private keys are refused rather than silently reduced to
// their public half, so a secret is never passed where an identity is meant;
// use a signer's Public() method.
func Format(pub crypto.PublicKey) (string, error) {
	var raw []byte
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", invalid("Ed25519 key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		if err := checkEd25519Point(k); err != nil {
			return "", err
		}
		raw = append(binary.AppendUvarint(nil, codecEd25519), k...)
	case *ecdsa.PublicKey:
		if k == nil || k.Curve != elliptic.P256() {
			return "", invalid("ECDSA key is not on P-256: only P-256 is supported")
		}
		// Bytes panics on a key with nil coordinates, so check them first.
		if k.X == nil || k.Y == nil {
			return "", invalid("P-256 key has no coordinates")
		}
		unc, err := k.Bytes()
		if err != nil || len(unc) != 65 {
			return "", invalid("P-256 key is not a point on the curve")
		}
		raw = binary.AppendUvarint(nil, codecP256)
		raw = append(raw, 2|unc[64]&1)
		raw = append(raw, unc[1:33]...)
	case ed25519.PrivateKey, *ecdsa.PrivateKey:
		return "", invalid("got a private key (%T): pass its Public() key", pub)
	default:
		return "", invalid("unsupported key type %T: only Ed25519 and P-256 are supported", pub)
	}
	return prefix + "z" + base58.Encode(raw), nil
}

// JWK returns the public JWK of an Ed25519 (kty OKP, crv Ed25519) or P-256
// (kty EC, crv P-256) key, with no kid: the caller decides how keys are named.
func JWK(pub crypto.PublicKey) (jose.JSONWebKey, error) {
	// Format validates exactly the keys this package can round-trip.
	if _, err := Format(pub); err != nil {
		return jose.JSONWebKey{}, err
	}
	return jose.JSONWebKey{Key: pub}, nil
}

// FromJWK returns the did:key of a public JWK. A JWK holding private material
// is refused rather than stripped: receiving one means a secret already went
// somewhere it should not, and that should be loud.
func FromJWK(jwk jose.JSONWebKey) (string, error) {
	switch k := jwk.Key.(type) {
	case ed25519.PublicKey, *ecdsa.PublicKey:
		return Format(k)
	case ed25519.PrivateKey, *ecdsa.PrivateKey:
		return "", invalid("JWK contains a private key")
	case nil:
		return "", invalid("JWK has no key")
	default:
		if !jwk.IsPublic() {
			return "", invalid("JWK contains a private key")
		}
		return "", invalid("unsupported JWK key type %T: only Ed25519 (OKP) and P-256 (EC) are supported", k)
	}
}

// Ed25519 point validation. crypto/ed25519 does not expose point decoding, so
// the RFC 8032 §5.1.3 decoding is done here with math/big: Parse is not on a
// hot path, and an identity that cannot verify anything must be refused when
// it is registered, not when the first signature fails.
var (
	edP = func() *big.Int {
		p := new(big.Int).Lsh(big.NewInt(1), 255)
		return p.Sub(p, big.NewInt(19))
	}()
	// edD = -121665/121666 mod p.
	edD = func() *big.Int {
		n := new(big.Int).Neg(big.NewInt(121665))
		inv := new(big.Int).ModInverse(big.NewInt(121666), edP)
		n.Mul(n, inv)
		return n.Mod(n, edP)
	}()
	edLegendreExp = func() *big.Int {
		e := new(big.Int).Sub(edP, big.NewInt(1))
		return e.Rsh(e, 1)
	}()
)

// smallOrderY holds the y coordinates (little-endian, sign bit clear) of the
// eight points of order dividing 8. A key on one of them verifies forged
// signatures for many messages, so it is not an identity.
var smallOrderY = [][32]byte{
	{1}, // identity (0, 1)
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, // (0, -1)
	{}, // (±sqrt(-1), 0)
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
}

func checkEd25519Point(enc []byte) error {
	var y32 [32]byte
	copy(y32[:], enc)
	sign := y32[31] >> 7
	y32[31] &= 0x7f
	for _, s := range smallOrderY {
		if y32 == s {
			return invalid("Ed25519 key is a small-order point")
		}
	}
	be := make([]byte, 32)
	for i := range 32 {
		be[i] = y32[31-i]
	}
	y := new(big.Int).SetBytes(be)
	if y.Cmp(edP) >= 0 {
		return invalid("Ed25519 key is not canonically encoded")
	}
	// x² = (y² - 1) / (d·y² + 1); the point exists iff that is a square.
	y2 := new(big.Int).Mul(y, y)
	y2.Mod(y2, edP)
	u := new(big.Int).Sub(y2, big.NewInt(1))
	u.Mod(u, edP)
	v := new(big.Int).Mul(edD, y2)
	v.Add(v, big.NewInt(1))
	v.Mod(v, edP)
	vInv := new(big.Int).ModInverse(v, edP)
	if vInv == nil {
		return invalid("Ed25519 key is not a point on the curve")
	}
	x2 := u.Mul(u, vInv)
	x2.Mod(x2, edP)
	if x2.Sign() == 0 {
		if sign == 1 {
			// x = 0 has no negative, so the sign bit makes the encoding invalid.
			return invalid("Ed25519 key is not canonically encoded")
		}
		return nil
	}
	if new(big.Int).Exp(x2, edLegendreExp, edP).Cmp(big.NewInt(1)) != 0 {
		return invalid("Ed25519 key is not a point on the curve")
	}
	return nil
}
