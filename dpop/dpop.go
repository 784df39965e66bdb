// Package dpop makes and checks OAuth 2.0 DPoP proofs (RFC 9449) and computes
// JWK thumbprints (RFC 7638).
//
// Every mandate access token is bound to a key (cnf.jkt) and every use of it
// carries a fresh proof signed by that key, so this package sits on the path
// of every request: Check is written to refuse early and cheaply, to never
// trust the proof's own claims about itself (the signature is checked with
// the key in the proof, then that key's thumbprint is compared with the
// token's), and to record a proof as used only once everything else passed.
package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
)

const (
	// HeaderName is the HTTP request header that carries a proof.
	HeaderName = "DPoP"
	// NonceHeaderName is the HTTP response header in which a server hands
	// out the nonce clients must put in their next proof.
	NonceHeaderName = "DPoP-Nonce"
)

// OAuth error codes carried in Error.Code, from RFC 9449 §12.2.
const (
	CodeInvalidProof = "invalid_dpop_proof"
	CodeUseNonce     = "use_dpop_nonce"
)

// Error is returned by Check for every refusal, so the HTTP layer can write
// the OAuth error response and the audit trail can record the reason without
// parsing messages.
//
// Code is the OAuth error code: "invalid_dpop_proof" or "use_dpop_nonce".
// Reason is a short stable word for metrics and audit events: one of
// "missing", "malformed", "typ", "alg", "jwk", "jwk_private", "signature",
// "htm", "htu", "iat", "jti", "replay", "ath", "key_mismatch", "nonce".
// Description is one sentence for the client; it never repeats the proof or
// the token, which may be secrets or attacker-chosen text.
type Error struct {
	Code, Reason, Description string
}

// Error returns the description, prefixed so it is recognisable in logs.
func (e *Error) Error() string { return "dpop: " + e.Description }

func refuse(reason, description string) *Error {
	return &Error{Code: CodeInvalidProof, Reason: reason, Description: description}
}

var b64 = base64.RawURLEncoding

// Thumbprint returns the RFC 7638 SHA-256 thumbprint (base64url, no padding)
// of an Ed25519, P-256 or RSA public key: the value access tokens carry in
// cnf.jkt. The canonical JSON is written by hand rather than through a JWK
// library because it is on the hot path and its exact bytes are the standard.
func Thumbprint(pub crypto.PublicKey) (string, error) {
	var canon string
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", fmt.Errorf("dpop: thumbprint: Ed25519 key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		canon = `{"crv":"Ed25519","kty":"OKP","x":"` + b64.EncodeToString(k) + `"}`
	case *ecdsa.PublicKey:
		unc, err := p256Bytes(k)
		if err != nil {
			return "", fmt.Errorf("dpop: thumbprint: %w", err)
		}
		canon = `{"crv":"P-256","kty":"EC","x":"` + b64.EncodeToString(unc[1:33]) +
			`","y":"` + b64.EncodeToString(unc[33:]) + `"}`
	case *rsa.PublicKey:
		if k == nil || k.N == nil || k.E <= 0 {
			return "", fmt.Errorf("dpop: thumbprint: incomplete RSA key")
		}
		canon = `{"e":"` + b64.EncodeToString(big.NewInt(int64(k.E)).Bytes()) +
			`","kty":"RSA","n":"` + b64.EncodeToString(k.N.Bytes()) + `"}`
	default:
		return "", fmt.Errorf("dpop: thumbprint: unsupported key type %T", pub)
	}
	sum := sha256.Sum256([]byte(canon))
	return b64.EncodeToString(sum[:]), nil
}

// p256Bytes returns the uncompressed point of a P-256 key, refusing other
// curves and keys that would make crypto/ecdsa panic.
func p256Bytes(k *ecdsa.PublicKey) ([]byte, error) {
	if k == nil || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ECDSA key is not on P-256")
	}
	if k.X == nil || k.Y == nil {
		return nil, fmt.Errorf("P-256 key has no coordinates")
	}
	unc, err := k.Bytes()
	if err != nil || len(unc) != 65 {
		return nil, fmt.Errorf("P-256 key is not a point on the curve")
	}
	return unc, nil
}

// AccessTokenHash returns the ath claim for an access token:
// base64url(SHA-256(ASCII token)), which ties a proof to one token so a proof
// captured with one token cannot be replayed with another.
func AccessTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return b64.EncodeToString(sum[:])
}
