package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
)

type rotationClaims struct {
	Subject  string          `json:"sub"`
	Audience json.RawMessage `json:"aud"`
	IssuedAt *int64          `json:"iat"`
	Expiry   *int64          `json:"exp"`
	JTI      string          `json:"jti"`
	NewDID   string          `json:"new_did"`
}

// RotateKey replaces an agent's key. The request is one payload signed twice (JWS JSON
// serialization): by a key the agent holds now, proving it is the agent, and by the new key,
// proving the agent holds it. The agent id and handle stay; the old key keeps working for the
// grace period so running processes can pick up the new one.
func (s *Service) RotateKey(ctx context.Context, requestID, agentID, body string) (_ Agent, err error) {
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentRotateKey)
	ev.ActorType, ev.ActorID, ev.AgentID, ev.Target = audit.ActorAgent, agentID, agentID, agentID
	defer s.recordDenial(ctx, &ev, &err)

	jws, err := jose.ParseSignedJSON(strings.TrimSpace(body), SignatureAlgs)
	if err != nil {
		return Agent{}, apperr.Wrap(err, apperr.Invalid, "malformed", "the body must be a JWS in JSON serialization with two signatures (EdDSA or ES256): the current key's and the new key's")
	}
	if len(jws.Signatures) != 2 {
		return Agent{}, apperr.New(apperr.Invalid, "malformed", "the key rotation must carry exactly two signatures: the current key's and the new key's")
	}
	a, keys, err := s.ActiveKeys(ctx, agentID)
	if de, ok := apperr.As(err); ok && de.Reason == "unknown_agent" {
		return Agent{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no agent %q is registered", apperr.Clip(agentID, 80))
	}
	if err != nil {
		return Agent{}, err
	}
	ev.PrincipalID = a.OwnerID
	// Only the current key may hand the identity on: a rotated-out key in its grace period
	// still authenticates, but must not be able to rotate the agent away from its owner.
	for did := range keys {
		if !isCurrentKey(a, did) {
			delete(keys, did)
		}
	}
	var oldIdx, newIdx = -1, -1
	var newDID string
	for i, sig := range jws.Signatures {
		kid := sig.Protected.KeyID
		if _, ok := keys[kid]; ok && oldIdx < 0 {
			oldIdx = i
		} else {
			newIdx, newDID = i, kid
		}
	}
	if oldIdx < 0 || newIdx < 0 {
		return Agent{}, apperr.New(apperr.Forbidden, "key_mismatch", "one signature's kid must be a current key of agent %s and the other the new did:key", a.ID)
	}
	newPub, err := CanonicalKey(newDID)
	if err != nil {
		return Agent{}, err
	}
	payload, err := verifyIndex(jws, oldIdx, keys[jws.Signatures[oldIdx].Protected.KeyID])
	if err != nil {
		return Agent{}, apperr.Wrap(err, apperr.Invalid, "signature", "the current key's signature does not verify")
	}
	if _, err := verifyIndex(jws, newIdx, newPub); err != nil {
		return Agent{}, apperr.Wrap(err, apperr.Invalid, "signature", "the new key's signature does not verify")
	}
	// Only the agent itself learns that it is revoked.
	if a.Status == StatusRevoked {
		return Agent{}, apperr.New(apperr.Forbidden, "agent_revoked", "the agent is revoked; a revoked agent cannot rotate keys")
	}
	var c rotationClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return Agent{}, apperr.Wrap(err, apperr.Invalid, "malformed", "the payload is not a JSON object of claims")
	}
	if c.Subject != a.ID || c.NewDID != newDID {
		return Agent{}, apperr.New(apperr.Invalid, "sub", "sub must be the agent id and new_did the new key's did:key")
	}
	if err := s.checkFreshness(ctx, "rot", c.Audience, c.IssuedAt, c.Expiry, c.JTI); err != nil {
		return Agent{}, err
	}
	jkt, err := dpop.Thumbprint(newPub)
	if err != nil {
		return Agent{}, fmt.Errorf("thumbprint: %w", err)
	}
	now := s.cfg.Now().UTC()
	a, err = s.cfg.Store.RotateKey(ctx, a.ID, Key{DID: newDID, JKT: jkt, CreatedAt: now}, now.Add(s.cfg.KeyGrace), ev)
	if errors.Is(err, ErrDIDTaken) {
		return Agent{}, apperr.Wrap(err, apperr.Conflict, "did_taken", "the new did:key is already registered: generate a fresh key")
	}
	if err != nil {
		return Agent{}, fmt.Errorf("rotate key of agent %s: %w", agentID, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return a, nil
}

// verifyIndex verifies signature i of a multi-signature JWS with pub and returns the payload.
func verifyIndex(jws *jose.JSONWebSignature, i int, pub any) ([]byte, error) {
	idx, _, payload, err := jws.VerifyMulti(pub)
	if err != nil {
		return nil, err
	}
	if idx != i {
		return nil, errors.New("signature made by another key")
	}
	return payload, nil
}

// isCurrentKey reports whether did is a key of a without an expiry: the one that signs now.
func isCurrentKey(a Agent, did string) bool {
	for _, k := range a.Keys {
		if k.DID == did {
			return k.ExpiresAt.IsZero()
		}
	}
	return false
}
