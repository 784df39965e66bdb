package audit

import (
	"crypto"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Signed checkpoints make the chain checkable from outside the database. Every so often the
// server signs the head of the chain (its sequence number and hash, the time and the issuer)
// as a compact JWS and stores it; a copy kept elsewhere (a file, a sink) lets `mandate audit
// verify` notice a truncated tail or a re-hashed chain, which links and hashes alone cannot:
// anyone with write access to the database can recompute every hash, but not sign.
//
// The signing key is an Ed25519 key derived with HKDF from the oldest master key, which an
// attacker with only database access does not hold; the public keys of every master key in the
// file are published as a JWKS (GET /v1/audit/checkpoint-keys), so a checkpoint signed before a
// master key rotation still verifies, and anyone can check one with a standard JOSE library.

// CheckpointType is the typ header of a checkpoint JWS.
const CheckpointType = "mandate-audit-checkpoint+jwt"

// ActionAuditPrune records a retention cut: the events up to and including Target's sequence
// number (a signed checkpoint) were removed.
const ActionAuditPrune = "audit.prune"

// checkpointKeyInfo is the HKDF info of the checkpoint signing key: changing it changes the key.
const checkpointKeyInfo = "mandate audit checkpoint v1"

// Checkpoint is a signed statement that the chain's event Seq had hash Hash at Time. Its JSON
// form is one line of a checkpoints file: the compact JWS under "checkpoint", and its claims
// beside it for people (only the JWS is trusted).
type Checkpoint struct {
	Seq    int64     `json:"seq"`
	Hash   string    `json:"hash"`
	Time   time.Time `json:"time"`
	Issuer string    `json:"iss,omitempty"`
	KeyID  string    `json:"kid,omitempty"`
	JWS    string    `json:"checkpoint"`
}

// checkpointClaims is the JWS payload.
type checkpointClaims struct {
	Issuer string `json:"iss"`
	IAT    int64  `json:"iat"`
	Seq    int64  `json:"seq"`
	Hash   string `json:"hash"`
}

// CheckpointKeys signs checkpoints with the key of the oldest master key, and knows the public
// key of every master key.
type CheckpointKeys struct {
	sign   ed25519.PrivateKey
	kid    string
	public jose.JSONWebKeySet
}

// NewCheckpointKeys derives the checkpoint keys from the master keys, newest first (as
// token.ParseMasterKeys returns them). The oldest signs: a rotation adds a key in front and
// leaves the signing key as it was, so replicas agree throughout.
func NewCheckpointKeys(masters ...[]byte) (*CheckpointKeys, error) {
	if len(masters) == 0 {
		return nil, errors.New("checkpoint keys: no master key")
	}
	k := &CheckpointKeys{}
	for i, m := range masters {
		seed, err := hkdf.Key(sha256.New, m, nil, checkpointKeyInfo, ed25519.SeedSize)
		if err != nil {
			return nil, fmt.Errorf("derive checkpoint key: %w", err)
		}
		priv := ed25519.NewKeyFromSeed(seed)
		jwk := jose.JSONWebKey{Key: priv.Public(), Algorithm: string(jose.EdDSA), Use: "sig"}
		kid, err := thumbprint(jwk)
		if err != nil {
			return nil, err
		}
		jwk.KeyID = kid
		if !slices.ContainsFunc(k.public.Keys, func(o jose.JSONWebKey) bool { return o.KeyID == kid }) {
			k.public.Keys = append(k.public.Keys, jwk)
		}
		if i == len(masters)-1 {
			k.sign, k.kid = priv, kid
		}
	}
	return k, nil
}

// thumbprint is the RFC 7638 SHA-256 thumbprint of jwk, base64url.
func thumbprint(jwk jose.JSONWebKey) (string, error) {
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("checkpoint key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// KeyID is the kid of the signing key.
func (k *CheckpointKeys) KeyID() string { return k.kid }

// JWKS is the public keys checkpoints verify with: the signing key and those of the other
// master keys in the file.
func (k *CheckpointKeys) JWKS() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: slices.Clone(k.public.Keys)}
}

// Sign signs the head seq/hash as issuer at t.
func (k *CheckpointKeys) Sign(issuer string, seq int64, hash string, t time.Time) (Checkpoint, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k.sign},
		(&jose.SignerOptions{}).WithType(CheckpointType).WithHeader(jose.HeaderKey("kid"), k.kid))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint signer: %w", err)
	}
	payload, err := json.Marshal(checkpointClaims{Issuer: issuer, IAT: t.Unix(), Seq: seq, Hash: hash})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	return Checkpoint{Seq: seq, Hash: hash, Time: time.Unix(t.Unix(), 0).UTC(), Issuer: issuer, KeyID: k.kid, JWS: compact}, nil
}

// ErrCheckpointSignature is wrapped by ParseCheckpoint when a checkpoint does not verify.
var ErrCheckpointSignature = errors.New("checkpoint signature does not verify")

// ParseCheckpoint verifies the compact JWS raw with the key of keys its kid names, and returns
// the checkpoint it signs.
func ParseCheckpoint(raw string, keys jose.JSONWebKeySet) (Checkpoint, error) {
	raw = strings.TrimSpace(raw)
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: not a compact EdDSA JWS: %v", ErrCheckpointSignature, err)
	}
	if len(jws.Signatures) != 1 {
		return Checkpoint{}, fmt.Errorf("%w: want one signature", ErrCheckpointSignature)
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != CheckpointType {
		return Checkpoint{}, fmt.Errorf("%w: typ %q, want %s", ErrCheckpointSignature, typ, CheckpointType)
	}
	found := keys.Key(h.KeyID)
	if len(found) == 0 {
		return Checkpoint{}, fmt.Errorf("%w: no published checkpoint key has kid %q", ErrCheckpointSignature, h.KeyID)
	}
	var payload []byte
	for _, k := range found {
		if payload, err = jws.Verify(k.Key); err == nil {
			break
		}
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: kid %q: %v", ErrCheckpointSignature, h.KeyID, err)
	}
	c, err := decodeClaims(payload)
	if err != nil {
		return Checkpoint{}, err
	}
	c.KeyID, c.JWS = h.KeyID, raw
	return c, nil
}

// DecodeCheckpoint reads the claims of the compact JWS raw without verifying it: to name the
// sequence number of a checkpoint that does not verify, or where its signature is checked
// elsewhere.
func DecodeCheckpoint(raw string) (Checkpoint, error) {
	raw = strings.TrimSpace(raw)
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return Checkpoint{}, errors.New("checkpoint: not a compact JWS")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint: payload: %w", err)
	}
	c, err := decodeClaims(payload)
	if err != nil {
		return Checkpoint{}, err
	}
	var h struct {
		KID string `json:"kid"`
	}
	if b, err := base64.RawURLEncoding.DecodeString(parts[0]); err == nil {
		_ = json.Unmarshal(b, &h)
	}
	c.KeyID, c.JWS = h.KID, raw
	return c, nil
}

func decodeClaims(payload []byte) (Checkpoint, error) {
	var cl checkpointClaims
	if err := json.Unmarshal(payload, &cl); err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint claims: %w", err)
	}
	if cl.Seq < 1 || len(cl.Hash) != sha256.Size*2 {
		return Checkpoint{}, fmt.Errorf("checkpoint claims: want seq ≥ 1 and a SHA-256 hex hash, have seq %d hash %q", cl.Seq, cl.Hash)
	}
	return Checkpoint{Seq: cl.Seq, Hash: cl.Hash, Time: time.Unix(cl.IAT, 0).UTC(), Issuer: cl.Issuer}, nil
}
