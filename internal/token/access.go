package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TypeAccessToken is the JOSE typ of access tokens (RFC 9068).
const TypeAccessToken = "at+jwt"

// Confirmation is the cnf claim: the RFC 7638 thumbprint of the key a token is bound to.
type Confirmation struct {
	JKT string `json:"jkt"`
}

// AccessClaims are the claims of an access token (RFC 9068 plus DPoP binding and the agent's
// identity). Every token is bound to a key: JKT is never empty.
type AccessClaims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  jwt.Audience `json:"aud"`
	Scope     string       `json:"scope,omitempty"`
	Expiry    int64        `json:"exp"`
	IssuedAt  int64        `json:"iat"`
	NotBefore int64        `json:"nbf"`
	JTI       string       `json:"jti"`
	ClientID  string       `json:"client_id"`
	Cnf       Confirmation `json:"cnf"`
	Handle    string       `json:"handle,omitempty"`
	DID       string       `json:"did,omitempty"`
}

// ExpiresAt is the exp claim as a time.
func (c *AccessClaims) ExpiresAt() time.Time { return time.Unix(c.Expiry, 0) }

// acceptedAlgs are the algorithms our own tokens may carry.
var acceptedAlgs = []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256}

// ErrInvalidToken is returned (wrapped with the reason) for a token this server did not sign,
// or that is malformed or expired.
var ErrInvalidToken = errors.New("invalid token")

// ParseAccess verifies an access token signed by one of our published keys and returns its
// claims. It checks the signature, typ, issuer and expiry; revocation is the caller's check.
func (k *Keys) ParseAccess(ctx context.Context, raw, issuer string) (*AccessClaims, error) {
	jws, err := jose.ParseSigned(raw, acceptedAlgs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: want one signature", ErrInvalidToken)
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != TypeAccessToken {
		return nil, fmt.Errorf("%w: typ %q is not %s", ErrInvalidToken, typ, TypeAccessToken)
	}
	pub, err := k.PublicKey(ctx, h.KeyID)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	var c AccessClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrInvalidToken, err)
	}
	if c.Issuer != issuer {
		return nil, fmt.Errorf("%w: issuer %q", ErrInvalidToken, c.Issuer)
	}
	if !k.cfg.Now().Before(c.ExpiresAt()) {
		return nil, fmt.Errorf("%w: expired", ErrInvalidToken)
	}
	return &c, nil
}
