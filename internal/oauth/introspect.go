package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// caller is who called introspection or revocation: a person with an API token, or an agent
// with private_key_jwt.
type caller struct {
	userID, agentID string
	admin           bool
}

// authenticateCaller accepts a management API token (Authorization: Bearer) or private_key_jwt.
func (s *Server) authenticateCaller(ctx context.Context, r *http.Request) (caller, error) {
	u, present, err := s.principalFromBearer(ctx, r)
	if present {
		if err != nil {
			return caller{}, err
		}
		return caller{userID: u.ID, admin: u.Admin}, nil
	}
	a, use, err := s.authenticateClient(ctx, r.PostForm)
	if err != nil {
		return caller{}, err
	}
	if err := s.useAssertion(ctx, use); err != nil {
		return caller{}, err
	}
	if a.Status != registry.StatusClaimed {
		return caller{}, invalidClient("agent_"+strings.ToLower(string(a.Status)), "the agent is "+string(a.Status)+": only a claimed agent may call this endpoint", nil)
	}
	return caller{agentID: a.ID}, nil
}

// mayAct reports whether who may see or revoke the tokens of agentID: the agent itself, its
// owner, or an admin.
func (s *Server) mayAct(ctx context.Context, who caller, agentID string) (bool, error) {
	if who.admin || (who.agentID != "" && who.agentID == agentID) {
		return true, nil
	}
	if who.userID == "" {
		return false, nil
	}
	// The registry answers not_found for an agent that is not this person's (or none at all).
	_, err := s.cfg.Registry.Get(ctx, principal.User{ID: who.userID}, agentID)
	if _, refused := apperr.As(err); refused {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("agent %s: %w", agentID, err)
	}
	return true, nil
}

// active verifies a token of ours and returns its claims when it is usable now: signature,
// issuer, expiry, not revoked, and its agent not revoked.
func (s *Server) active(ctx context.Context, raw string) (*token.AccessClaims, error) {
	c, err := s.cfg.Keys.ParseAccess(ctx, raw, s.cfg.Issuer)
	if err != nil {
		return nil, err
	}
	err = s.cfg.Delegation.CheckLive(ctx, c.JTI, c.Cnf.JKT, delegation.ChainAgents(c), c.Txn)
	if errors.Is(err, delegation.ErrNotLive) {
		return nil, fmt.Errorf("%w: %v", token.ErrInvalidToken, err)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// tokenRequestBy reads the form of introspection and revocation: the authenticated caller and
// the token parameter. Their answers are never cached.
func (s *Server) tokenRequestBy(w http.ResponseWriter, r *http.Request) (caller, string, error) {
	form, err := parseForm(w, r)
	if err != nil {
		return caller{}, "", err
	}
	who, err := s.authenticateCaller(r.Context(), r)
	if err != nil {
		return caller{}, "", err
	}
	if form.Get("token") == "" {
		return caller{}, "", badRequest(CodeInvalidRequest, "token", "the token parameter is required")
	}
	w.Header().Set("Cache-Control", "no-store")
	return who, form.Get("token"), nil
}

// Introspect is RFC 7662 token introspection.
func (s *Server) Introspect(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	who, raw, err := s.tokenRequestBy(w, r)
	if err != nil {
		return err
	}
	c, err := s.active(ctx, raw)
	inactive := errors.Is(err, token.ErrInvalidToken)
	if err != nil && !inactive {
		return err
	}
	if !inactive {
		// A caller learns about its own tokens only (RFC 7662 §4): others read as inactive.
		ok, err := s.mayAct(ctx, who, c.ClientID)
		if err != nil {
			return err
		}
		inactive = !ok
	}
	if inactive {
		httpapi.WriteJSON(w, http.StatusOK, map[string]any{"active": false})
		return nil
	}
	out := map[string]any{
		"active": true, "token_type": "DPoP", "scope": c.Scope, "client_id": c.ClientID,
		"sub": c.Subject, "aud": c.Audience, "iss": c.Issuer, "exp": c.Expiry, "iat": c.IssuedAt,
		"nbf": c.NotBefore, "jti": c.JTI, "cnf": c.Cnf, "handle": c.Handle, "did": c.DID,
	}
	if c.Txn != "" {
		out["txn"], out["grant"], out["act"] = c.Txn, c.Grant, c.Act
		if len(c.AuthorizationDetails) > 0 {
			out["authorization_details"] = c.AuthorizationDetails
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// Revoke is RFC 7009 token revocation. The token's own agent, the agent's owner or an admin may
// revoke it; as the RFC asks, an invalid or unknown token is answered with 200 all the same.
func (s *Server) Revoke(w http.ResponseWriter, r *http.Request) (err error) {
	ctx := r.Context()
	who, raw, err := s.tokenRequestBy(w, r)
	if err != nil {
		return err
	}
	c, err := s.cfg.Keys.ParseAccess(ctx, raw, s.cfg.Issuer)
	if err != nil {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	ev := audit.New(s.cfg.Now(), httpapi.RequestID(ctx), audit.ActionTokenRevoke)
	ev.AgentID, ev.TokenID, ev.Target = c.ClientID, c.JTI, c.JTI
	if who.agentID != "" {
		ev.ActorType, ev.ActorID = audit.ActorAgent, who.agentID
	} else {
		ev.ActorType, ev.ActorID, ev.PrincipalID = audit.ActorUser, who.userID, who.userID
	}
	// The revoked (or refused) token's agent, principal, task and chain: the event is in the
	// principal's report.
	c.Describe(&ev)
	ev.Detail = "revocation of an access token (RFC 7009)"
	allowed, err := s.mayAct(ctx, who, c.ClientID)
	if err != nil {
		return err
	}
	if !allowed {
		ev.Reason = "forbidden"
		if err := s.cfg.Audit.AppendEvent(ctx, ev); err != nil {
			return err
		}
		return badRequest(CodeUnauthorizedClient, "forbidden", "only the token's agent, the agent's owner or an admin may revoke it (RFC 7009 §2.1)")
	}
	if err := s.cfg.Issuance.Revoke(ctx, c, ev); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
