package delegation

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
)

// RequestGrant records an agent's ask for a grant; its owner answers with ApproveRequest or
// DenyRequest, and the agent polls with PollRequest.
func (s *Service) RequestGrant(ctx context.Context, requestID, agentID string, sp Spec, reason string) (GrantRequest, error) {
	a, err := s.cfg.Agents.GetAgent(ctx, agentID)
	if err != nil {
		return GrantRequest{}, fmt.Errorf("get agent %s: %w", agentID, err)
	}
	if a.Status != registry.StatusClaimed {
		return GrantRequest{}, apperr.New(apperr.Forbidden, "agent_status", "the agent is %s: only a claimed agent can ask for a grant", a.Status)
	}
	if sp.Limits.MaxTokenTTL == 0 {
		sp.Limits.MaxTokenTTL = s.cfg.MaxTokenTTL
	}
	if sp, err = s.normalize(ctx, sp); err != nil {
		return GrantRequest{}, err
	}
	if len(reason) > 1000 {
		return GrantRequest{}, apperr.New(apperr.Invalid, "reason", "the reason is limited to 1000 bytes")
	}
	now := s.cfg.Now().UTC()
	r := GrantRequest{ID: ids.New("grq"), AgentID: a.ID, OwnerID: a.OwnerID, Scopes: sp.Scopes, Resources: sp.Resources,
		AuthorizationDetails: sp.AuthorizationDetails, Limits: sp.Limits, Reason: reason, Status: RequestPending,
		CreatedAt: now, ExpiresAt: now.Add(RequestTTL)}
	ev := audit.New(now, requestID, ActionGrantRequest)
	ev.ActorType, ev.ActorID, ev.AgentID, ev.PrincipalID, ev.Target = audit.ActorAgent, a.ID, a.ID, a.OwnerID, r.ID
	ev.Detail = "scope=" + strings.Join(r.Scopes, " ")
	if err := s.cfg.Store.CreateGrantRequest(ctx, r, ev); err != nil {
		return GrantRequest{}, fmt.Errorf("create grant request: %w", err)
	}
	return r, nil
}

// ownRequest returns a request that by must answer (or any, for an admin).
func (s *Service) ownRequest(ctx context.Context, by principal.User, id string) (GrantRequest, error) {
	r, err := s.cfg.Store.GetGrantRequest(ctx, id)
	if errors.Is(err, ErrNotFound) || (err == nil && !by.Admin && r.OwnerID != by.ID) {
		return GrantRequest{}, apperr.New(apperr.NotFound, "not_found", "no grant request %q for you: see mandate grant requests", apperr.Clip(id, 80))
	}
	if err != nil {
		return GrantRequest{}, fmt.Errorf("get grant request %s: %w", id, err)
	}
	if r.Status != RequestPending || !s.cfg.Now().Before(r.ExpiresAt) {
		return GrantRequest{}, apperr.New(apperr.Conflict, "request_decided", "grant request %s was already answered or has lapsed", r.ID)
	}
	return r, nil
}

// ListRequests lists the grant requests by must answer (all, for an admin), by status.
func (s *Service) ListRequests(ctx context.Context, by principal.User, status RequestStatus) ([]GrantRequest, error) {
	owner := by.ID
	if by.Admin {
		owner = ""
	}
	return s.cfg.Store.ListGrantRequests(ctx, owner, status)
}

// ApproveRequest answers a pending request with a grant; narrow, when set, replaces what the
// agent asked for and may only narrow it.
func (s *Service) ApproveRequest(ctx context.Context, requestID string, by principal.User, id string, narrow *Spec) (Grant, error) {
	r, err := s.ownRequest(ctx, by, id)
	if err != nil {
		return Grant{}, err
	}
	sp := Spec{Scopes: r.Scopes, Resources: r.Resources, AuthorizationDetails: r.AuthorizationDetails, Limits: r.Limits}
	if narrow != nil {
		if sp.Scopes, err = NarrowScopes(narrow.Scopes, r.Scopes); err != nil {
			return Grant{}, apperr.Wrap(err, apperr.Invalid, "scope", "approval may only narrow the request: %v", err)
		}
		if sp.Resources, err = NarrowResources(narrow.Resources, r.Resources); err != nil {
			return Grant{}, apperr.Wrap(err, apperr.Invalid, "resource", "approval may only narrow the request: %v", err)
		}
		if sp.AuthorizationDetails, err = NarrowDetails(narrow.AuthorizationDetails, r.AuthorizationDetails); err != nil {
			return Grant{}, apperr.Wrap(err, apperr.Invalid, "authorization_details", "approval may only narrow the request: %v", err)
		}
		sp.Limits = narrowLimits(narrow.Limits, r.Limits)
		if sp.Limits.Budget, err = NarrowBudget(narrow.Limits.Budget, r.Limits.Budget, "the request's budget"); err != nil {
			return Grant{}, apperr.Wrap(err, apperr.Invalid, "budget", "approval may only narrow the request: %v", err)
		}
		sp.ExpiresIn = narrow.ExpiresIn
	}
	a, err := s.cfg.Agents.GetAgent(ctx, r.AgentID)
	if err != nil {
		return Grant{}, fmt.Errorf("get agent %s: %w", r.AgentID, err)
	}
	if a.Status != registry.StatusClaimed {
		return Grant{}, apperr.New(apperr.Invalid, "agent_status", "agent @%s is %s", a.Handle, a.Status)
	}
	return s.grant(ctx, requestID, by, a, sp, r.ID)
}

// narrowLimits takes the smaller of each limit (a zero asked-for limit means "as requested").
func narrowLimits(n, r Limits) Limits {
	out := r
	if n.MaxTaskTTL > 0 && n.MaxTaskTTL < r.MaxTaskTTL {
		out.MaxTaskTTL = n.MaxTaskTTL
	}
	if n.MaxTokenTTL > 0 && n.MaxTokenTTL < r.MaxTokenTTL {
		out.MaxTokenTTL = n.MaxTokenTTL
	}
	if n.MaxDepth > 0 && n.MaxDepth < r.MaxDepth {
		out.MaxDepth = n.MaxDepth
	}
	if n.MaxDepth == 1 { // a chain of one agent: no sub-delegation
		out.AllowSubdelegation = false
	}
	return out
}

// DenyRequest refuses a pending request.
func (s *Service) DenyRequest(ctx context.Context, requestID string, by principal.User, id string) (GrantRequest, error) {
	r, err := s.ownRequest(ctx, by, id)
	if err != nil {
		return GrantRequest{}, err
	}
	ev := audit.New(s.cfg.Now(), requestID, ActionGrantDeny)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.AgentID, ev.Target = audit.ActorUser, by.ID, by.ID, r.AgentID, r.ID
	r, err = s.cfg.Store.DenyGrantRequest(ctx, r.ID, s.cfg.Now().UTC(), ev)
	if errors.Is(err, ErrNotActive) {
		return GrantRequest{}, apperr.Wrap(err, apperr.Conflict, "request_decided", "grant request %s was already answered", id)
	}
	return r, err
}

// Poll outcomes, named as RFC 8628 §3.5 names them.
var (
	ErrPending  = apperr.New(apperr.Invalid, "authorization_pending", "the owner has not answered yet: poll again after the interval")
	ErrSlowDown = apperr.New(apperr.Invalid, "slow_down", "polling too fast: wait the interval between polls")
	ErrDenied   = apperr.New(apperr.Forbidden, "access_denied", "the owner denied the grant request")
	ErrExpired  = apperr.New(apperr.Invalid, "expired_token", "the grant request lapsed unanswered: ask again")
)

// PollRequest is the agent's poll: the grant and its token once approved, or one of ErrPending,
// ErrSlowDown, ErrDenied, ErrExpired.
func (s *Service) PollRequest(ctx context.Context, agentID, id string) (Grant, string, error) {
	now := s.cfg.Now().UTC()
	r, err := s.cfg.Store.TouchGrantRequest(ctx, id, now)
	if errors.Is(err, ErrNotFound) || (err == nil && r.AgentID != agentID) {
		return Grant{}, "", apperr.New(apperr.NotFound, "not_found", "no grant request %q of this agent", apperr.Clip(id, 80))
	}
	if err != nil {
		return Grant{}, "", fmt.Errorf("poll grant request %s: %w", id, err)
	}
	switch {
	case r.Status == RequestDenied:
		return Grant{}, "", ErrDenied
	case r.Status == RequestApproved:
		g, err := s.cfg.Store.GetGrant(ctx, r.GrantID)
		if err != nil {
			return Grant{}, "", fmt.Errorf("get grant %s: %w", r.GrantID, err)
		}
		a, err := s.cfg.Agents.GetAgent(ctx, agentID)
		if err != nil {
			return Grant{}, "", fmt.Errorf("get agent %s: %w", agentID, err)
		}
		tok, err := s.grantToken(ctx, g, a)
		return g, tok, err
	case !now.Before(r.ExpiresAt):
		return Grant{}, "", ErrExpired
	case !r.LastPolledAt.IsZero() && now.Sub(r.LastPolledAt) < PollInterval:
		return Grant{}, "", ErrSlowDown
	}
	return Grant{}, "", ErrPending
}
