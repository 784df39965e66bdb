// Package delegation is the heart of mandate: grants (a principal's standing mandate for an
// agent), grant requests, tasks (one execution under a grant or a parent task), and the token
// exchange plan that only ever narrows (see exchange.go: every limit of a hop is enforced there).
package delegation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// Audit actions of delegation.
const (
	ActionGrantCreate   = "grant.create"
	ActionGrantRevoke   = "grant.revoke"
	ActionGrantRequest  = "grant.request"
	ActionGrantDeny     = "grant.deny"
	ActionTaskStart     = "task.start"
	ActionTaskEnd       = "task.end"
	ActionTaskRevoke    = "task.revoke"
	ActionTokenExchange = "token.exchange"
)

// Defaults and bounds of grants.
const (
	DefaultGrantTTL   = 30 * 24 * time.Hour
	MaxGrantTTL       = 366 * 24 * time.Hour
	DefaultMaxTaskTTL = time.Hour
	MaxDepthLimit     = 8
	RequestTTL        = 24 * time.Hour // a pending grant request lapses after this
	PollInterval      = 5 * time.Second
)

// Config wires the Service.
type Config struct {
	Store       Store
	Agents      registry.Store
	Keys        *token.Keys
	Tokens      token.Store // revoked access tokens
	Audit       audit.Store
	Issuer      string
	MaxTokenTTL time.Duration // the server's access token lifetime: no grant's tokens live longer
	Upstreams   Upstreams     // the vault's upstreams, which per-upstream budget keys must name
	Now         func() time.Time
}

// Service manages grants, grant requests and tasks, and plans token exchanges.
type Service struct{ cfg Config }

// New returns the delegation service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}
}

// Spec is what a grant (or a grant request) gives: the requested authority and limits. Zero
// limits take the defaults.
type Spec struct {
	Scopes               []string
	Resources            []string
	AuthorizationDetails []json.RawMessage
	Limits               Limits
	ExpiresIn            time.Duration
}

// normalize validates a spec and fills in defaults.
func (s *Service) normalize(ctx context.Context, sp Spec) (Spec, error) {
	if len(sp.Scopes) == 0 {
		return sp, apperr.New(apperr.Invalid, "scope", "a grant needs at least one scope")
	}
	// Narrowing a set against itself validates and de-duplicates it.
	scopes, err := NarrowScopes(sp.Scopes, sp.Scopes)
	if err != nil {
		return sp, narrowed(err)
	}
	sp.Scopes = scopes
	for i, r := range sp.Resources {
		n, err := NormalizeResource(r)
		if err != nil {
			return sp, narrowed(err)
		}
		sp.Resources[i] = n
	}
	if len(sp.Resources) == 0 {
		return sp, apperr.New(apperr.Invalid, "resource", "a grant needs at least one resource URI (RFC 8707), e.g. https://api.example.com/")
	}
	if len(sp.AuthorizationDetails) > 0 {
		raw, _ := json.Marshal(sp.AuthorizationDetails)
		if sp.AuthorizationDetails, err = ParseDetails(string(raw)); err != nil {
			return sp, narrowed(err)
		}
	}
	l := &sp.Limits
	if l.MaxTaskTTL == 0 {
		l.MaxTaskTTL = DefaultMaxTaskTTL
	}
	if l.MaxTokenTTL == 0 || l.MaxTokenTTL > s.cfg.MaxTokenTTL {
		l.MaxTokenTTL = s.cfg.MaxTokenTTL
	}
	if l.MaxDepth == 0 {
		l.MaxDepth = 1
		if l.AllowSubdelegation {
			l.MaxDepth = 2
		}
	}
	if sp.ExpiresIn == 0 {
		sp.ExpiresIn = DefaultGrantTTL
	}
	switch {
	case l.MaxTaskTTL < time.Minute || l.MaxTaskTTL > 7*24*time.Hour:
		return sp, apperr.New(apperr.Invalid, "ttl", "max task TTL %v: want between 1m and 168h", l.MaxTaskTTL)
	case l.MaxTokenTTL < 10*time.Second:
		return sp, apperr.New(apperr.Invalid, "ttl", "max token TTL %v: want at least 10s", l.MaxTokenTTL)
	case l.MaxDepth < 1 || l.MaxDepth > MaxDepthLimit:
		return sp, apperr.New(apperr.Invalid, "depth", "max depth %d: want between 1 and %d", l.MaxDepth, MaxDepthLimit)
	case l.MaxDepth > 1 && !l.AllowSubdelegation:
		return sp, apperr.New(apperr.Invalid, "depth", "max depth %d needs sub-delegation allowed (--allow-subdelegation)", l.MaxDepth)
	case sp.ExpiresIn < time.Minute || sp.ExpiresIn > MaxGrantTTL:
		return sp, apperr.New(apperr.Invalid, "expiry", "grant lifetime %v: want between 1m and %v", sp.ExpiresIn, MaxGrantTTL)
	}
	if err := CheckBudget(l.Budget, BudgetOfGrant); err != nil {
		return sp, narrowed(err)
	}
	if err := s.checkBudgetUpstreams(ctx, l.Budget, nil); err != nil {
		return sp, narrowed(err)
	}
	return sp, nil
}

// ownedAgent returns a CLAIMED agent that by owns (or any, for an admin).
func (s *Service) ownedAgent(ctx context.Context, by principal.User, ref string) (registry.Agent, error) {
	a, err := s.cfg.Agents.GetAgent(ctx, ref)
	if errors.Is(err, registry.ErrNotFound) || (err == nil && !by.Admin && a.OwnerID != by.ID) {
		return registry.Agent{}, apperr.New(apperr.NotFound, "not_found", "no agent %q of yours: see mandate agents list", apperr.Clip(ref, 80))
	}
	if err != nil {
		return registry.Agent{}, fmt.Errorf("get agent %s: %w", ref, err)
	}
	if a.Status != registry.StatusClaimed {
		return registry.Agent{}, apperr.New(apperr.Invalid, "agent_status", "agent @%s is %s: only a claimed agent can be granted authority", a.Handle, a.Status)
	}
	return a, nil
}

// CreateGrant lets agentRef act for by within sp. Only the agent's owner or an admin may.
func (s *Service) CreateGrant(ctx context.Context, requestID string, by principal.User, agentRef string, sp Spec) (Grant, error) {
	a, err := s.ownedAgent(ctx, by, agentRef)
	if err != nil {
		return Grant{}, err
	}
	return s.grant(ctx, requestID, by, a, sp, "")
}

func (s *Service) grant(ctx context.Context, requestID string, by principal.User, a registry.Agent, sp Spec, fromRequest string) (Grant, error) {
	sp, err := s.normalize(ctx, sp)
	if err != nil {
		return Grant{}, err
	}
	if err := withinGrantable(by, sp); err != nil {
		return Grant{}, err
	}
	now := s.cfg.Now().UTC()
	g := Grant{ID: ids.New("gr"), PrincipalID: by.ID, AgentID: a.ID, Scopes: sp.Scopes, Resources: sp.Resources,
		AuthorizationDetails: sp.AuthorizationDetails, Limits: sp.Limits, Status: GrantActive,
		CreatedAt: now, ExpiresAt: now.Add(sp.ExpiresIn), RequestID: fromRequest}
	ev := audit.New(now, requestID, ActionGrantCreate)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.AgentID, ev.Target = audit.ActorUser, by.ID, by.ID, a.ID, g.ID
	ev.ActorHandle, ev.GrantID, ev.Scopes, ev.Resources = by.Name, g.ID, g.Scopes, g.Resources
	ev.Terms = canonicalTerms(g.Terms(by.ID))
	ev.Detail = fmt.Sprintf("%s let @%s act for them until %s", by.ID, a.Handle, g.ExpiresAt.Format(time.RFC3339))
	if fromRequest != "" {
		ev.Detail += ", approving request " + fromRequest
	}
	err = s.cfg.Store.CreateGrant(ctx, g, ev)
	if errors.Is(err, ErrNotActive) {
		return Grant{}, apperr.Wrap(err, apperr.Conflict, "request_decided", "the grant request was already answered")
	}
	if err != nil {
		return Grant{}, fmt.Errorf("create grant for %s: %w", a.ID, err)
	}
	return g, nil
}

// visibleGrant returns a grant that by granted, or owns the agent of, or any for an admin.
func (s *Service) visibleGrant(ctx context.Context, by principal.User, id string) (Grant, error) {
	g, err := s.cfg.Store.GetGrant(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Grant{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no grant %q: see mandate grant list", apperr.Clip(id, 80))
	}
	if err != nil {
		return Grant{}, fmt.Errorf("get grant %s: %w", id, err)
	}
	if by.Admin || g.PrincipalID == by.ID {
		return g, nil
	}
	if a, err := s.cfg.Agents.GetAgent(ctx, g.AgentID); err == nil && a.OwnerID == by.ID {
		return g, nil
	}
	return Grant{}, apperr.New(apperr.NotFound, "not_found", "no grant %q: see mandate grant list", apperr.Clip(id, 80))
}

// GetGrant shows a grant, with what its budget has counted, to its principal, the agent's owner
// or an admin.
func (s *Service) GetGrant(ctx context.Context, by principal.User, id string) (Grant, error) {
	g, err := s.visibleGrant(ctx, by, id)
	if err != nil {
		return Grant{}, err
	}
	counted, err := s.cfg.Store.GrantBudgetUsed(ctx, g.ID)
	if err != nil {
		return Grant{}, fmt.Errorf("budget of grant %s: %w", g.ID, err)
	}
	g.BudgetUsed = map[string]int64{}
	for k := range g.Limits.Budget {
		if name, _, _ := strings.Cut(k, ":"); name == BudgetCalls {
			g.BudgetUsed[k] = counted[k]
		}
	}
	return g, nil
}

// ListGrants lists the grants by gave (an admin sees all), optionally for one agent.
func (s *Service) ListGrants(ctx context.Context, by principal.User, agentRef string) ([]Grant, error) {
	agentID := ""
	if agentRef != "" {
		a, err := s.cfg.Agents.GetAgent(ctx, agentRef)
		if err != nil || (!by.Admin && a.OwnerID != by.ID) {
			return nil, apperr.New(apperr.NotFound, "not_found", "no agent %q of yours", apperr.Clip(agentRef, 80))
		}
		agentID = a.ID
	}
	principalID := by.ID
	if by.Admin {
		principalID = ""
	}
	return s.cfg.Store.ListGrants(ctx, principalID, agentID)
}

// RevokeGrant revokes a grant and every task under it: its principal, the agent's owner or an
// admin may.
func (s *Service) RevokeGrant(ctx context.Context, requestID string, by principal.User, id string) (Grant, error) {
	g, err := s.visibleGrant(ctx, by, id)
	if err != nil {
		return Grant{}, err
	}
	ev := audit.New(s.cfg.Now(), requestID, ActionGrantRevoke)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.AgentID, ev.Target = audit.ActorUser, by.ID, g.PrincipalID, g.AgentID, g.ID
	ev.ActorHandle, ev.GrantID = by.Name, g.ID
	g, err = s.cfg.Store.RevokeGrant(ctx, g.ID, s.cfg.Now().UTC(), ev)
	if errors.Is(err, ErrNotActive) {
		return s.cfg.Store.GetGrant(ctx, id) // revoking twice is not an error
	}
	if err != nil {
		return Grant{}, fmt.Errorf("revoke grant %s: %w", id, err)
	}
	return g, nil
}

// GrantTokens mints a grant token for each active grant of the agent, bound to its current key.
func (s *Service) GrantTokens(ctx context.Context, agentID string) ([]Grant, []string, error) {
	a, err := s.cfg.Agents.GetAgent(ctx, agentID)
	if err != nil {
		return nil, nil, fmt.Errorf("get agent %s: %w", agentID, err)
	}
	grants, err := s.cfg.Store.ListGrants(ctx, "", agentID)
	if err != nil {
		return nil, nil, err
	}
	now := s.cfg.Now()
	var out []Grant
	var toks []string
	for _, g := range grants {
		if g.Status != GrantActive || !now.Before(g.ExpiresAt) {
			continue
		}
		tok, err := s.grantToken(ctx, g, a)
		if err != nil {
			return nil, nil, err
		}
		out, toks = append(out, g), append(toks, tok)
	}
	return out, toks, nil
}

func (s *Service) grantToken(ctx context.Context, g Grant, a registry.Agent) (string, error) {
	l := g.Limits
	c := token.GrantClaims{
		Issuer: s.cfg.Issuer, Subject: g.PrincipalID, Audience: jwt.Audience{s.cfg.Issuer},
		IssuedAt: s.cfg.Now().Unix(), Expiry: g.ExpiresAt.Unix(), JTI: g.ID, ClientID: a.ID,
		Cnf:   token.Confirmation{JKT: a.Keys[0].JKT},
		Act:   &token.Act{Sub: a.ID, Handle: a.Handle, DID: a.Keys[0].DID},
		Scope: strings.Join(g.Scopes, " "), Resources: g.Resources, AuthorizationDetails: g.AuthorizationDetails,
		Limits: token.GrantLimits{MaxTaskTTL: int64(l.MaxTaskTTL.Seconds()), MaxTokenTTL: int64(l.MaxTokenTTL.Seconds()),
			MaxDepth: l.MaxDepth, AllowSubdelegation: l.AllowSubdelegation, Budget: l.Budget},
	}
	tok, err := s.cfg.Keys.Sign(ctx, token.TypeGrantToken, c)
	if err != nil {
		return "", fmt.Errorf("sign grant token %s: %w", g.ID, err)
	}
	return tok, nil
}

// withinGrantable enforces that a grant never gives more than its principal may give: a user an
// admin has bounded may grant only within the bound's scopes and resources.
func withinGrantable(by principal.User, sp Spec) error {
	if by.Admin || by.Grantable == nil {
		return nil
	}
	if _, err := NarrowScopes(sp.Scopes, by.Grantable.Scopes); err != nil {
		return apperr.Wrap(err, apperr.Forbidden, "grantable", "you may grant only the scopes %s (set by an admin)", strings.Join(by.Grantable.Scopes, " "))
	}
	if _, err := NarrowResources(sp.Resources, by.Grantable.Resources); err != nil {
		return apperr.Wrap(err, apperr.Forbidden, "grantable", "you may grant only the resources %s (set by an admin)", strings.Join(by.Grantable.Resources, " "))
	}
	return nil
}
