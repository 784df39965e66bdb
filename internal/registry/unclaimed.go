package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// TypeClaimCodeRequest is the JWS typ of an agent's request for a new claim code.
const TypeClaimCodeRequest = "mandate-claim-code+jwt"

type claimCodeClaims struct {
	Subject  string          `json:"sub"`
	Audience json.RawMessage `json:"aud"`
	IssuedAt *int64          `json:"iat"`
	Expiry   *int64          `json:"exp"`
	JTI      string          `json:"jti"`
}

// NewClaimCode gives an UNCLAIMED agent a fresh one-time claim code, replacing the one it had
// (used or not, expired or not). The request is a compact JWS signed by the agent's current key
// (typ mandate-claim-code+jwt; sub = the agent id, aud, iat, exp, jti as for a registration),
// so only the agent can ask, and an agent whose first code lapsed keeps its id, key and handle
// instead of reaching a dead end. It works until the agent is purged (see PurgeUnclaimed).
func (s *Service) NewClaimCode(ctx context.Context, requestID, agentID, body string) (_ Registered, err error) {
	// Anyone may send this for any agent id: the caller is anonymous until the signature
	// verifies with the agent's key.
	ev := audit.New(s.cfg.Now(), requestID, audit.ActionAgentClaimCode)
	ev.ActorType, ev.Target = audit.ActorAnonymous, agentID
	defer s.recordDenial(ctx, &ev, &err)

	jws, err := parseSigned(body, TypeClaimCodeRequest)
	if err != nil {
		return Registered{}, err
	}
	a, keys, err := s.ActiveKeys(ctx, agentID)
	if de, ok := apperr.As(err); ok && de.Reason == "unknown_agent" {
		return Registered{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no agent %q is registered (an agent never claimed is removed some time after its claim code lapsed): register again", apperr.Clip(agentID, 80))
	}
	if err != nil {
		return Registered{}, err
	}
	kid := jws.Header().KeyID
	pub, ok := keys[kid]
	if !ok || !isCurrentKey(a, kid) {
		return Registered{}, apperr.New(apperr.Forbidden, "key_mismatch", "kid must be the current did:key of agent %s", a.ID)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return Registered{}, apperr.Wrap(err, apperr.Invalid, "signature", "the signature does not verify with the key in kid")
	}
	ev.ActorType, ev.ActorID, ev.AgentID, ev.Target = audit.ActorAgent, a.ID, a.ID, a.ID
	var c claimCodeClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return Registered{}, apperr.Wrap(err, apperr.Invalid, "malformed", "the payload is not a JSON object of claims")
	}
	if c.Subject != a.ID {
		return Registered{}, apperr.New(apperr.Invalid, "sub", "sub must be the agent id, %s", a.ID)
	}
	if err := s.checkFreshness(ctx, "ccode", c.Audience, c.IssuedAt, c.Expiry, c.JTI); err != nil {
		return Registered{}, err
	}
	if a.Status != StatusUnclaimed {
		return Registered{}, apperr.New(apperr.Conflict, "not_unclaimed", "agent @%s is %s: only an UNCLAIMED agent gets a claim code", a.Handle, a.Status)
	}
	code := newClaimCode()
	expires := s.cfg.Now().UTC().Add(s.cfg.ClaimCodeTTL)
	switch err := s.cfg.Store.RenewClaimCode(ctx, a.ID, ClaimCode{Hash: ids.Hash(code), ExpiresAt: expires}, ev); {
	case errors.Is(err, ErrConflict):
		return Registered{}, apperr.Wrap(err, apperr.Conflict, "not_unclaimed", "agent @%s was claimed or revoked meanwhile: only an UNCLAIMED agent gets a claim code", a.Handle)
	case errors.Is(err, ErrNotFound):
		return Registered{}, apperr.Wrap(err, apperr.NotFound, "not_found", "agent %s was removed meanwhile (its claim code had lapsed): register again", a.ID)
	case err != nil:
		return Registered{}, fmt.Errorf("renew claim code of agent %s: %w", a.ID, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	return Registered{Agent: a, ClaimCode: code, ClaimCodeExpires: expires}, nil
}

// purgeBatch is how many agents one transaction of PurgeUnclaimed deletes.
const purgeBatch = 100

// PurgeUnclaimed deletes the UNCLAIMED agents whose claim code lapsed more than the configured
// grace ago, with their keys, so their handles and keys are free again (registration is
// anonymous: without this, a handle could be squatted forever). The grace is the time an agent
// has to ask for a new claim code. It works in batches, each deletion audited in the batch's
// transaction, and returns how many agents it deleted. A grace of 0 or less keeps every agent.
func (s *Service) PurgeUnclaimed(ctx context.Context) (int, error) {
	if s.cfg.UnclaimedGrace <= 0 {
		return 0, nil
	}
	now := s.cfg.Now().UTC()
	detail := fmt.Sprintf("never claimed: its claim code lapsed more than %v ago and no new one was asked for; its handle and key are free again", s.cfg.UnclaimedGrace)
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		gone, err := s.cfg.Store.PurgeUnclaimed(ctx, now.Add(-s.cfg.UnclaimedGrace), purgeBatch, func(a Agent) audit.Event {
			ev := audit.New(now, "", audit.ActionAgentPurge)
			ev.ActorType, ev.AgentID, ev.Target = audit.ActorSystem, a.ID, a.ID
			ev.Detail = "@" + a.Handle + " " + detail
			return ev
		})
		total += len(gone)
		if err != nil {
			return total, fmt.Errorf("purge unclaimed agents: %w", err)
		}
		if len(gone) < purgeBatch {
			return total, nil
		}
	}
}
