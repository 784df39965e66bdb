package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/httpapi"
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
	if a.Status == registry.StatusRevoked {
		return caller{}, invalidClient("agent_revoked", "the agent is revoked", nil)
	}
	return caller{agentID: a.ID}, nil
}

// active verifies a token of ours and returns its claims when it is usable now: signature,
// issuer, expiry, not revoked, and its agent not revoked.
func (s *Server) active(ctx context.Context, raw string) (*token.AccessClaims, error) {
	c, err := s.cfg.Keys.ParseAccess(ctx, raw, s.cfg.Issuer)
	if err != nil {
		return nil, err
	}
	revoked, err := s.cfg.Tokens.IsTokenRevoked(ctx, c.JTI)
	if err != nil {
		return nil, fmt.Errorf("check revocation of %s: %w", c.JTI, err)
	}
	if revoked {
		return nil, fmt.Errorf("%w: token %s revoked", token.ErrInvalidToken, c.JTI)
	}
	a, err := s.cfg.Agents.GetAgent(ctx, c.ClientID)
	if errors.Is(err, registry.ErrNotFound) || (err == nil && a.Status != registry.StatusClaimed) {
		return nil, fmt.Errorf("%w: agent %s not active", token.ErrInvalidToken, c.ClientID)
	}
	if err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	return c, nil
}

// Introspect is RFC 7662 token introspection.
func (s *Server) Introspect(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	form, err := parseForm(w, r)
	if err != nil {
		return err
	}
	if _, err := s.authenticateCaller(ctx, r); err != nil {
		return err
	}
	if form.Get("token") == "" {
		return badRequest(CodeInvalidRequest, "token", "the token parameter is required")
	}
	w.Header().Set("Cache-Control", "no-store")
	c, err := s.active(ctx, form.Get("token"))
	if errors.Is(err, token.ErrInvalidToken) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]any{"active": false})
		return nil
	}
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{
		"active": true, "token_type": "DPoP", "scope": c.Scope, "client_id": c.ClientID,
		"sub": c.Subject, "aud": c.Audience, "iss": c.Issuer, "exp": c.Expiry, "iat": c.IssuedAt,
		"nbf": c.NotBefore, "jti": c.JTI, "cnf": c.Cnf, "handle": c.Handle, "did": c.DID,
	})
	return nil
}

// Revoke is RFC 7009 token revocation. The token's own agent, the agent's owner or an admin may
// revoke it; as the RFC asks, an invalid or unknown token is answered with 200 all the same.
func (s *Server) Revoke(w http.ResponseWriter, r *http.Request) (err error) {
	ctx := r.Context()
	form, err := parseForm(w, r)
	if err != nil {
		return err
	}
	who, err := s.authenticateCaller(ctx, r)
	if err != nil {
		return err
	}
	if form.Get("token") == "" {
		return badRequest(CodeInvalidRequest, "token", "the token parameter is required")
	}
	w.Header().Set("Cache-Control", "no-store")
	c, err := s.cfg.Keys.ParseAccess(ctx, form.Get("token"), s.cfg.Issuer)
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
	allowed := who.admin || who.agentID == c.ClientID
	if !allowed && who.userID != "" {
		a, err := s.cfg.Agents.GetAgent(ctx, c.ClientID)
		allowed = err == nil && a.OwnerID == who.userID
	}
	if !allowed {
		ev.Reason = "forbidden"
		if err := s.cfg.Audit.AppendEvent(ctx, ev); err != nil {
			return err
		}
		return oauthError(http.StatusForbidden, "unauthorized_client", "forbidden", "only the token's agent, the agent's owner or an admin may revoke it")
	}
	err = s.cfg.Tokens.RevokeToken(ctx, token.RevokedToken{JTI: c.JTI, AgentID: c.ClientID, ExpiresAt: c.ExpiresAt(), RevokedAt: s.cfg.Now().UTC()}, ev)
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", c.JTI, err)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
