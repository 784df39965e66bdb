package oauth

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/jwsverify"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// Token exchange identifiers (RFC 8693 §3).
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	CodeInvalidDetails     = "invalid_authorization_details" // RFC 9396 §5
)

// tokenExchange is RFC 8693 token exchange, the one way authority moves: a grant token starts a
// task, a task token is refreshed or handed, narrower, to another agent. The caller
// authenticates by its DPoP proof with the subject token's key (the hop rule); the planning and
// every narrowing rule are in delegation.PlanExchange.
type tokenExchange struct{ s *Server }

func (g *tokenExchange) Type() string     { return GrantTypeTokenExchange }
func (g *tokenExchange) ClientAuth() bool { return false }

func (g *tokenExchange) Issue(ctx context.Context, req *tokenRequest) (*tokenResponse, error) {
	f := req.Form
	if t := f.Get("requested_token_type"); t != "" && t != TokenTypeAccessToken {
		return nil, badRequest(CodeInvalidRequest, "requested_token_type", "only access tokens are issued: requested_token_type must be "+TokenTypeAccessToken)
	}
	if len(f["audience"]) > 0 {
		return nil, badRequest(CodeInvalidTarget, "audience", "name the resources with resource (RFC 8707) instead of audience")
	}
	subject, err := g.subject(ctx, f.Get("subject_token"), f.Get("subject_token_type"))
	if err != nil {
		return nil, err
	}
	// From here a refusal names the subject token's agent, principal, grant and task.
	subject.Describe(req.Event)
	x := delegation.ExchangeRequest{Subject: subject, ProofJKT: req.Proof.JKT, Scopes: strings.Fields(f.Get("scope")),
		Resources: f["resource"], Purpose: f.Get("purpose")}
	if raw := f.Get("actor_token"); raw != "" {
		if x.Actor, err = g.actor(raw, f.Get("actor_token_type")); err != nil {
			return nil, err
		}
	}
	if raw := f.Get("authorization_details"); raw != "" {
		if x.Details, err = delegation.ParseDetails(raw); err != nil {
			return nil, badRequest(CodeInvalidDetails, "authorization_details", "authorization_details: "+err.Error())
		}
	}
	if raw := f.Get("budget"); raw != "" {
		if x.Budget, err = delegation.ParseBudgetJSON([]byte(raw)); err != nil {
			return nil, badRequest(CodeInvalidRequest, "budget", err.Error())
		}
	}
	if raw := f.Get("task_ttl"); raw != "" {
		secs, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || secs <= 0 || secs > 366*24*3600 {
			return nil, badRequest(CodeInvalidRequest, "ttl", "task_ttl must be a positive number of seconds")
		}
		x.TaskTTL = time.Duration(secs) * time.Second
	}
	plan, err := g.s.cfg.Delegation.PlanExchange(ctx, x, req.Event)
	if err != nil {
		return nil, exchangeError(err)
	}
	resp, err := g.s.mint(ctx, req, plan.Claims, plan.Expiry)
	if err != nil {
		return nil, err
	}
	resp.IssuedTokenType = TokenTypeAccessToken
	resp.TaskID, resp.TaskExpiresAt = plan.Claims.Txn, plan.TaskExpiry.Unix()
	req.IssueAction = delegation.ActionTokenExchange
	req.Uses = append(req.Uses, plan.Uses...)
	uses := req.Uses
	req.Commit = func(ctx context.Context, ev audit.Event) error {
		// A revocation that raced this exchange wins: refused as invalid_grant.
		return exchangeError(g.s.cfg.Delegation.CommitExchange(ctx, plan, uses, ev))
	}
	return resp, nil
}

// subject verifies the subject token: a grant token or an access token of ours.
func (g *tokenExchange) subject(ctx context.Context, raw, typ string) (delegation.Subject, error) {
	if raw == "" {
		return delegation.Subject{}, badRequest(CodeInvalidRequest, "subject_token", "subject_token is required: a grant token or a task access token")
	}
	if typ != TokenTypeAccessToken && typ != TokenTypeJWT {
		return delegation.Subject{}, badRequest(CodeInvalidRequest, "subject_token_type", "subject_token_type must be "+TokenTypeJWT+" (grant token) or "+TokenTypeAccessToken)
	}
	invalid := func(err error) error {
		e := badRequest(CodeInvalidRequest, "subject_token", "subject_token is not a valid, unexpired token of this server")
		e.Cause = err
		return e
	}
	switch token.TypeOf(raw) {
	case token.TypeGrantToken:
		c, err := g.s.cfg.Keys.ParseGrant(ctx, raw, g.s.cfg.Issuer)
		if err != nil {
			return delegation.Subject{}, invalid(err)
		}
		return delegation.Subject{Grant: c}, nil
	case token.TypeAccessToken:
		c, err := g.s.cfg.Keys.ParseAccess(ctx, raw, g.s.cfg.Issuer)
		if err != nil {
			return delegation.Subject{}, invalid(err)
		}
		return delegation.Subject{Access: c}, nil
	}
	return delegation.Subject{}, invalid(nil)
}

type actorClaims struct {
	Issuer   string          `json:"iss"`
	Audience json.RawMessage `json:"aud"`
	Expiry   *int64          `json:"exp"`
	JTI      string          `json:"jti"`
}

// actor verifies an actor token: a JWT the next holder signs with its own key, naming that key
// (kid and iss are its did:key), for this server, short-lived, used once.
func (g *tokenExchange) actor(raw, typ string) (*delegation.ActorKey, error) {
	bad := func(reason, msg string, cause error) error {
		e := badRequest(CodeInvalidRequest, reason, msg)
		e.Cause = cause
		return e
	}
	if typ != TokenTypeJWT {
		return nil, bad("actor_token_type", "actor_token_type must be "+TokenTypeJWT, nil)
	}
	jws, err := jwsverify.Parse(raw)
	if err != nil {
		return nil, bad("actor_token", "actor_token must be a compact JWS signed with EdDSA, Ed25519 or ES256", err)
	}
	// Other signed objects carry the same claims (a registration is also iss = kid = a did:key
	// for this issuer): one must not pass for an actor's consent.
	switch typ, _ := jws.Header().ExtraHeaders["typ"].(string); strings.ToLower(typ) {
	case registry.TypeRegistration, registry.TypeClaimCodeRequest, "dpop+jwt", token.TypeAccessToken, token.TypeGrantToken:
		return nil, bad("actor_token", "the actor token's typ must be JWT (or absent); this is another kind of signed object", nil)
	}
	did := jws.Header().KeyID
	pub, err := registry.CanonicalKey(did)
	if err != nil {
		return nil, bad("actor_token", "the actor token's kid must be the did:key of the next holder's key, in its canonical form", err)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, bad("actor_token", "the actor token's signature does not verify with the key in kid", err)
	}
	var c actorClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, bad("actor_token", "the actor token's claims are not a JSON object", err)
	}
	now := g.s.cfg.Now()
	switch {
	case c.Issuer != did:
		return nil, bad("actor_token", "the actor token's iss must be its kid (the next holder's did:key)", nil)
	case !jwsverify.AudienceIncludes(c.Audience, g.s.cfg.Issuer, g.s.tokenEndpoint()):
		return nil, bad("actor_token_aud", "the actor token's aud must be this server, "+g.s.cfg.Issuer, nil)
	case c.Expiry == nil || !time.Unix(*c.Expiry, 0).After(now):
		return nil, bad("actor_token_expired", "the actor token has expired (or has no exp): sign a fresh one", nil)
	case time.Unix(*c.Expiry, 0).Sub(now) > maxAssertionLifetime:
		return nil, bad("actor_token_lifetime", "the actor token's exp may be at most 5 minutes ahead", nil)
	case c.JTI == "" || len(c.JTI) > 256:
		return nil, bad("actor_token", "the actor token needs a unique jti", nil)
	}
	jkt, err := dpop.Thumbprint(pub)
	if err != nil {
		return nil, bad("actor_token", "unsupported key in the actor token", err)
	}
	return &delegation.ActorKey{DID: did, JKT: jkt,
		Use: token.SingleUse{ID: "act:" + jkt + ":" + c.JTI, ExpiresAt: time.Unix(*c.Expiry, 0)}}, nil
}

// exchangeCodes maps a broken narrowing limit to its OAuth error; other refusals are
// invalid_grant when the authority is gone or forbids the hop, invalid_request otherwise.
var exchangeCodes = map[string]string{
	"scope":                 CodeInvalidScope,
	"resource":              CodeInvalidTarget,
	"authorization_details": CodeInvalidDetails,
}

func exchangeError(err error) error {
	de, ok := apperr.As(err)
	if !ok {
		return err
	}
	code := CodeInvalidRequest
	if c, ok := exchangeCodes[de.Reason]; ok {
		code = c
	} else if de.Kind == apperr.Forbidden {
		code = CodeInvalidGrant
	}
	e := oauthError(http.StatusBadRequest, code, de.Reason, de.Msg)
	e.Cause = err
	return e
}
