package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/token"
)

// GrantTypeJWTBearer is the RFC 7523 §2.1 grant type.
const GrantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// jwtBearer trades an external workload's OIDC token (a CI job's, a pod's, a SPIFFE JWT-SVID)
// for a service account's token, under the federation rule the assertion matches. The token is
// DPoP-bound when a proof is sent (required where the rule says so); without one it is a Bearer
// token for the management API only.
type jwtBearer struct{ s *Server }

func (g *jwtBearer) Type() string        { return GrantTypeJWTBearer }
func (g *jwtBearer) ClientAuth() bool    { return false }
func (g *jwtBearer) ProofOptional() bool { return true }

// Replayed: the assertion's jti was used before (issuers that require single use).
func (g *jwtBearer) Replayed(ctx context.Context, err error) error {
	e := refuseAssertion(ctx, "jti_replay", "the assertion's jti was already used: the issuer requires single use")
	e.Cause = err
	return e
}

func (g *jwtBearer) Issue(ctx context.Context, req *tokenRequest) (*tokenResponse, error) {
	assertion := req.Form.Get("assertion")
	if assertion == "" {
		return nil, badRequest(CodeInvalidRequest, "assertion_missing", "send the workload's token as the assertion parameter (RFC 7523 §2.1)")
	}
	m, err := g.s.cfg.Federation.Match(ctx, assertion)
	if ref, ok := errors.AsType[*federation.Refusal](err); ok {
		return nil, refuseAssertion(ctx, ref.Reason, ref.Detail)
	}
	if err != nil {
		return nil, fmt.Errorf("match assertion: %w", err)
	}
	ev := req.Event
	ev.ActorType, ev.ActorID, ev.PrincipalID = audit.ActorService, m.ServiceAccount.ID, m.ServiceAccount.ID
	ev.Detail = fmt.Sprintf("rule=%s iss=%s sub=%s", m.Rule.ID, m.Issuer.URL, m.Subject)

	if m.Rule.RequireDPoP && req.Proof == nil {
		return nil, refuseAssertion(ctx, "dpop_required", "rule "+m.Rule.ID+" requires a DPoP-bound token and the request had no DPoP proof")
	}
	// The rule is the parent: the same narrowing as every other hop (internal/delegation).
	scope, err := delegation.NarrowScopes(strings.Fields(req.Form.Get("scope")), m.Rule.Scopes)
	if err != nil {
		return nil, refuseAssertion(ctx, "scope", fmt.Sprintf("rule %s: %v", m.Rule.ID, err))
	}
	aud := jwt.Audience{g.s.cfg.Issuer}
	if res := req.Form["resource"]; len(res) > 0 {
		if req.Proof == nil {
			return nil, badRequest(CodeInvalidRequest, "dpop_missing", "a token for a resource server must be DPoP-bound: send a DPoP proof with the request (RFC 9449)")
		}
		narrowed, err := delegation.NarrowResources(res, m.Rule.Resources)
		if err != nil {
			return nil, refuseAssertion(ctx, "resource", fmt.Sprintf("rule %s: %v", m.Rule.ID, err))
		}
		aud = jwt.Audience(narrowed)
	}
	if m.Issuer.RequireJTI {
		// Used up with the token's audit event: one transaction, shared by every replica.
		req.Uses = append(req.Uses, token.SingleUse{ID: "assertion:" + m.Issuer.URL + ":" + m.JTI, ExpiresAt: m.ExpiresAt.Add(time.Hour)})
	}
	return g.s.mintTTL(ctx, req, token.AccessClaims{
		Subject: m.ServiceAccount.ID, Audience: aud, Scope: strings.Join(scope, " "), ClientID: m.Rule.ID,
	}, g.lifetime(m), time.Time{})
}

// lifetime is min(the rule's TTL, twice what is left of the assertion, the hard cap): a token
// never long outlives the workload identity it came from.
func (g *jwtBearer) lifetime(m federation.Match) time.Duration {
	ttl := m.Rule.TokenTTL
	if ttl <= 0 {
		ttl = federation.DefaultTokenTTL
	}
	if left := 2 * m.ExpiresAt.Sub(g.s.cfg.Now()); left < ttl {
		ttl = left
	}
	return min(ttl, federation.MaxTokenTTL)
}

// refuseAssertion is the one answer to every refused assertion: invalid_grant, the same
// sentence, and the request id to look up. Which check failed (and on which claim) goes to the
// audit event only, so a prober learns nothing about the rules.
func refuseAssertion(ctx context.Context, reason, detail string) *httpapi.Error {
	desc := "the assertion was refused"
	if id := httpapi.RequestID(ctx); id != "" {
		desc += ": an admin can see why with mandate audit --request-id " + id
	}
	return &httpapi.Error{Status: http.StatusBadRequest, Code: CodeInvalidGrant, Reason: "assertion_" + reason, Description: desc, Audit: detail}
}
