// Package jwsverify parses and verifies the compact JWS that agents sign (registrations, client
// assertions) with go-jose, adding the fully-specified "Ed25519" algorithm name of RFC 9864,
// which go-jose does not know yet, next to EdDSA and ES256.
package jwsverify

import (
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// AlgEd25519 is RFC 9864's fully-specified name for EdDSA with Ed25519.
const AlgEd25519 = jose.SignatureAlgorithm("Ed25519")

// Algs are the algorithms accepted from agents. none, HMAC and RSA never are.
var Algs = []jose.SignatureAlgorithm{jose.EdDSA, AlgEd25519, jose.ES256}

// JWS is a parsed compact JWS with one signature.
type JWS struct {
	raw string
	jws *jose.JSONWebSignature
}

// Parse parses a compact JWS whose alg is in Algs.
func Parse(raw string) (*JWS, error) {
	jws, err := jose.ParseSignedCompact(raw, Algs)
	if err != nil {
		return nil, err
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("want exactly one signature")
	}
	return &JWS{raw: raw, jws: jws}, nil
}

// Header is the protected header.
func (j *JWS) Header() jose.Header { return j.jws.Signatures[0].Protected }

// UnverifiedPayload is the payload before verification: only for finding the key to verify with.
func (j *JWS) UnverifiedPayload() []byte { return j.jws.UnsafePayloadWithoutVerification() }

// Verify checks the signature with pub and returns the payload.
func (j *JWS) Verify(pub crypto.PublicKey) ([]byte, error) {
	if j.Header().Algorithm != string(AlgEd25519) {
		return j.jws.Verify(pub)
	}
	key, ok := pub.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("alg Ed25519 needs an Ed25519 key")
	}
	signingInput := j.raw[:strings.LastIndexByte(j.raw, '.')]
	if !ed25519.Verify(key, []byte(signingInput), j.jws.Signatures[0].Signature) {
		return nil, errors.New("signature does not verify")
	}
	return j.jws.UnsafePayloadWithoutVerification(), nil
}

// AudienceIncludes reports whether an aud claim (a string or an array of strings, RFC 7519
// §4.1.3) names any of want.
func AudienceIncludes(raw json.RawMessage, want ...string) bool {
	var list []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		list = []string{one}
	} else if json.Unmarshal(raw, &list) != nil {
		return false
	}
	for _, a := range list {
		for _, w := range want {
			if a == w {
				return true
			}
		}
	}
	return false
}
