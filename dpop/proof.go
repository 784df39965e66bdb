package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ProofOptions are the per-request inputs of NewProof besides method and URL.
type ProofOptions struct {
	// AccessToken, if set, is hashed into the ath claim, as RFC 9449 §4.2
	// requires when the proof accompanies an access token.
	AccessToken string
	// Nonce is the last value the server sent in DPoP-Nonce, if any.
	Nonce string
	// Now is the proof's iat; zero means time.Now(). Set it in tests.
	Now time.Time
}

// publicJWK is the header jwk for the two key types proofs are made with.
type publicJWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
}

type proofHeader struct {
	Typ string    `json:"typ"`
	Alg string    `json:"alg"`
	JWK publicJWK `json:"jwk"`
}

type proofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// NewProof signs a DPoP proof JWT (typ dpop+jwt, jwk = the public key, a
// random 128-bit jti) for one request. htu is rawURL without query and
// fragment. key may be any crypto.Signer whose Public() is an Ed25519 key
// (alg EdDSA) or a P-256 ECDSA key (alg ES256), so keys held in an agent, a
// KMS or an HSM all work the same way.
func NewProof(key crypto.Signer, method, rawURL string, opts ProofOptions) (string, error) {
	if key == nil {
		return "", errors.New("dpop: new proof: no signing key")
	}
	if method == "" {
		return "", errors.New("dpop: new proof: empty HTTP method")
	}
	htu, err := stripURL(rawURL)
	if err != nil {
		return "", fmt.Errorf("dpop: new proof: %w", err)
	}
	hdr := proofHeader{Typ: "dpop+jwt"}
	switch pub := key.Public().(type) {
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize {
			return "", errors.New("dpop: new proof: malformed Ed25519 public key")
		}
		hdr.Alg = "EdDSA"
		hdr.JWK = publicJWK{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(pub)}
	case *ecdsa.PublicKey:
		unc, err := p256Bytes(pub)
		if err != nil {
			return "", fmt.Errorf("dpop: new proof: %w", err)
		}
		hdr.Alg = "ES256"
		hdr.JWK = publicJWK{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(unc[1:33]), Y: b64.EncodeToString(unc[33:])}
	default:
		return "", fmt.Errorf("dpop: new proof: unsupported key type %T: use Ed25519 or P-256", pub)
	}

	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("dpop: new proof: jti: %w", err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	claims := proofClaims{
		JTI:   b64.EncodeToString(jti[:]),
		HTM:   method,
		HTU:   htu,
		IAT:   now.Unix(),
		Nonce: opts.Nonce,
	}
	if opts.AccessToken != "" {
		claims.ATH = AccessTokenHash(opts.AccessToken)
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return "", fmt.Errorf("dpop: new proof: header: %w", err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("dpop: new proof: claims: %w", err)
	}
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)

	var sig []byte
	if hdr.Alg == "EdDSA" {
		sig, err = key.Sign(rand.Reader, []byte(input), crypto.Hash(0))
		if err == nil && len(sig) != ed25519.SignatureSize {
			err = fmt.Errorf("signer returned a %d-byte Ed25519 signature", len(sig))
		}
	} else {
		digest := sha256.Sum256([]byte(input))
		var der []byte
		der, err = key.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err == nil {
			sig, err = derToP1363(der)
		}
	}
	if err != nil {
		return "", fmt.Errorf("dpop: new proof: signing: %w", err)
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// derToP1363 turns the ASN.1 signature crypto.Signer returns for ECDSA into
// the fixed-width r||s that JWS ES256 uses (RFC 7518 §3.4).
func derToP1363(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("signer returned a malformed ECDSA signature")
	}
	if sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 256 || sig.S.BitLen() > 256 {
		return nil, errors.New("signer returned an out-of-range ECDSA signature")
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}
