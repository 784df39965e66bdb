package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// ScopeAgent is the one scope of an agent acting as itself: it proves who the agent is and
// carries no delegated authority. Authority on a person's behalf comes from a grant.
const ScopeAgent = "agent"

// clientCredentials lets a claimed agent obtain a token for itself (RFC 6749 §4.4), authenticated
// with private_key_jwt and bound to its DPoP key.
type clientCredentials struct{ s *Server }

func (g *clientCredentials) Type() string     { return "client_credentials" }
func (g *clientCredentials) ClientAuth() bool { return true }

func (g *clientCredentials) Issue(ctx context.Context, req *tokenRequest) (*tokenResponse, error) {
	a := req.Client
	switch a.Status {
	case registry.StatusClaimed:
	case registry.StatusUnclaimed:
		return nil, badRequest(CodeUnauthorizedClient, "agent_unclaimed", "the agent is UNCLAIMED: its owner must first run mandate agents claim <code>")
	default:
		return nil, invalidClient("agent_revoked", "the agent is revoked and can get no tokens", nil)
	}
	scope := req.Form.Get("scope")
	if scope == "" {
		scope = ScopeAgent
	}
	for _, sc := range strings.Fields(scope) {
		if sc != ScopeAgent {
			return nil, badRequest(CodeInvalidScope, "scope", fmt.Sprintf("an agent acting as itself can request only the scope %q; authority on someone's behalf needs a grant", ScopeAgent))
		}
	}
	aud, err := g.s.audiences(req.Form["resource"])
	if err != nil {
		return nil, err
	}
	return g.s.mint(ctx, req, token.AccessClaims{
		Subject: a.ID, Audience: aud, Scope: ScopeAgent, ClientID: a.ID,
		Handle: a.Handle, DID: a.Keys[0].DID,
	}, time.Time{})
}

// audiences validates RFC 8707 resource indicators; without one the token is for this server.
func (s *Server) audiences(resources []string) (jwt.Audience, error) {
	if len(resources) == 0 {
		return jwt.Audience{s.cfg.Issuer}, nil
	}
	for _, r := range resources {
		u, err := url.Parse(r)
		if err != nil || !u.IsAbs() || u.Fragment != "" || u.Host == "" {
			return nil, badRequest(CodeInvalidTarget, "resource", "resource must be an absolute URI without a fragment (RFC 8707 §2)")
		}
	}
	return jwt.Audience(resources), nil
}

// mint has the issuance service make the token (token.Issuance.Mint): it expires after the
// configured lifetime, or at notAfter when that is earlier, and is bound to the request's proof
// key unless c names another. The response and the audit event's sentence are made here.
func (s *Server) mint(ctx context.Context, req *tokenRequest, c token.AccessClaims, notAfter time.Time) (*tokenResponse, error) {
	return s.mintTTL(ctx, req, c, 0, notAfter)
}

// mintTTL is mint with a lifetime other than the configured one (0 = the configured one).
// Without a proof (a proofOptional grant) the token is unbound: a Bearer token.
func (s *Server) mintTTL(ctx context.Context, req *tokenRequest, c token.AccessClaims, ttl time.Duration, notAfter time.Time) (*tokenResponse, error) {
	bind := ""
	if req.Proof != nil {
		bind = req.Proof.JKT
	}
	m, err := s.cfg.Issuance.Mint(ctx, c, ttl, notAfter, bind, req.Event)
	if errors.Is(err, token.ErrAuthorityExpired) {
		return nil, badRequest(CodeInvalidGrant, "expired", "the authority this token rests on has expired")
	}
	if err != nil {
		return nil, err
	}
	c, exp := m.Claims, time.Unix(m.Claims.Expiry, 0)
	tokenType := "DPoP"
	if c.Cnf.JKT == "" {
		tokenType = "Bearer"
	}
	if req.Event.Detail == "" {
		req.Event.Detail = fmt.Sprintf("a %s token for %s, until %s", tokenType, c.Subject, exp.UTC().Format(time.RFC3339))
		if c.Handle != "" {
			req.Event.Detail = fmt.Sprintf("@%s got a %s token for itself, until %s", c.Handle, tokenType, exp.UTC().Format(time.RFC3339))
		}
	}
	return &tokenResponse{AccessToken: m.Raw, TokenType: tokenType, ExpiresIn: c.Expiry - c.IssuedAt, Scope: c.Scope}, nil
}
