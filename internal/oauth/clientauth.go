package oauth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/jwsverify"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// AssertionType is the client_assertion_type of private_key_jwt (RFC 7523 §2.2).
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// maxAssertionLifetime bounds exp - now, so a captured assertion is short-lived even before its
// jti is remembered.
const maxAssertionLifetime = 5 * time.Minute

type assertionClaims struct {
	Issuer    string          `json:"iss"`
	Subject   string          `json:"sub"`
	Audience  json.RawMessage `json:"aud"`
	Expiry    *int64          `json:"exp"`
	NotBefore *int64          `json:"nbf"`
	IssuedAt  *int64          `json:"iat"`
	JTI       string          `json:"jti"`
}

// authenticateClient checks private_key_jwt: an assertion signed by one of the agent's current
// keys, for this server, unexpired, with a jti. It returns the agent and the jti to use up: the
// caller commits it (useAssertion, or with the token's audit event), so that a jti never seen
// before is the last check.
func (s *Server) authenticateClient(ctx context.Context, form url.Values) (registry.Agent, token.SingleUse, error) {
	if form.Get("client_assertion_type") != AssertionType || form.Get("client_assertion") == "" {
		return registry.Agent{}, token.SingleUse{}, invalidClient("no_client_auth", "authenticate with private_key_jwt: client_assertion_type="+AssertionType+" and a client_assertion signed by the agent's key", nil)
	}
	jws, err := jwsverify.Parse(form.Get("client_assertion"))
	if err != nil {
		return registry.Agent{}, token.SingleUse{}, invalidClient("assertion_malformed", "client_assertion must be a compact JWS signed with EdDSA, Ed25519 or ES256", err)
	}
	// The agent id is read unverified only to find the keys to verify with.
	var c assertionClaims
	if err := json.Unmarshal(jws.UnverifiedPayload(), &c); err != nil {
		return registry.Agent{}, token.SingleUse{}, invalidClient("assertion_malformed", "client_assertion claims are not a JSON object", err)
	}
	if c.Issuer == "" || c.Issuer != c.Subject {
		return registry.Agent{}, token.SingleUse{}, invalidClient("assertion_iss", "client_assertion iss and sub must both be the agent id", nil)
	}
	if id := form.Get("client_id"); id != "" && id != c.Issuer {
		return registry.Agent{}, token.SingleUse{}, invalidClient("client_id", "client_id does not match the client_assertion's iss", nil)
	}
	agent, keys, err := s.cfg.Registry.ActiveKeys(ctx, c.Issuer)
	if de, ok := apperr.As(err); ok && de.Kind == apperr.Unauthenticated {
		return registry.Agent{}, token.SingleUse{}, invalidClient("unknown_agent", "no such agent: register it with mandate agent register", err)
	}
	if err != nil { // the registry could not be read: no verdict on the client (503, see httpapi.AsError)
		return registry.Agent{}, token.SingleUse{}, fmt.Errorf("read the client's keys: %w", err)
	}
	if err := verifyWithAny(jws, jws.Header().KeyID, keys); err != nil {
		return agent, token.SingleUse{}, invalidClient("assertion_signature", "client_assertion is not signed by a current key of the agent (rotated keys stop working after their grace period)", err)
	}
	now := s.cfg.Now()
	if !jwsverify.AudienceIncludes(c.Audience, s.cfg.Issuer, s.tokenEndpoint()) {
		return agent, token.SingleUse{}, invalidClient("assertion_aud", "client_assertion aud must be the issuer "+s.cfg.Issuer+" or the token endpoint", nil)
	}
	if c.Expiry == nil || !time.Unix(*c.Expiry, 0).After(now) {
		return agent, token.SingleUse{}, invalidClient("assertion_expired", "client_assertion has no exp or has expired: sign a new one for each request", nil)
	}
	exp := time.Unix(*c.Expiry, 0)
	if exp.Sub(now) > maxAssertionLifetime {
		return agent, token.SingleUse{}, invalidClient("assertion_lifetime", fmt.Sprintf("client_assertion exp may be at most %v ahead", maxAssertionLifetime), nil)
	}
	if c.NotBefore != nil && time.Unix(*c.NotBefore, 0).After(now.Add(s.cfg.ClockSkew)) {
		return agent, token.SingleUse{}, invalidClient("assertion_nbf", "client_assertion is not valid yet: check the agent's clock", nil)
	}
	if c.JTI == "" || len(c.JTI) > 256 {
		return agent, token.SingleUse{}, invalidClient("assertion_jti", "client_assertion needs a unique jti (at most 256 characters)", nil)
	}
	return agent, token.SingleUse{ID: "cca:" + agent.ID + ":" + c.JTI, ExpiresAt: exp}, nil
}

// assertionReplayed is the refusal of a client assertion whose jti was used before.
func assertionReplayed(err error) error {
	return invalidClient("assertion_replay", "client_assertion was already used: sign a new one with a fresh jti for every request", err)
}

// useAssertion uses up an assertion's jti on its own, for endpoints that issue nothing.
func (s *Server) useAssertion(ctx context.Context, u token.SingleUse) error {
	err := s.cfg.JTIs.Use(ctx, u.ID, u.ExpiresAt)
	if errors.Is(err, dpop.ErrReplay) {
		return assertionReplayed(err)
	}
	if err != nil {
		return fmt.Errorf("record assertion jti: %w", err)
	}
	return nil
}

// verifyWithAny verifies with the key named by kid, or with each current key when there is no kid.
func verifyWithAny(jws *jwsverify.JWS, kid string, keys map[string]crypto.PublicKey) error {
	if kid != "" {
		pub, ok := keys[kid]
		if !ok {
			return fmt.Errorf("kid %q is not a current key of the agent", kid)
		}
		_, err := jws.Verify(pub)
		return err
	}
	for _, pub := range keys {
		if _, err := jws.Verify(pub); err == nil {
			return nil
		}
	}
	return errors.New("no current key verifies the signature")
}
