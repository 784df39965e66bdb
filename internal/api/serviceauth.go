package api

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/token"
)

// serviceAccount authenticates a service account's federated access token (from the jwt-bearer
// grant) as the principal the rest of the API sees: its svc_… id, and as Grantable what the
// token's scopes and its rule's resources let it delegate. An unbound token comes as
// Authorization: Bearer; a DPoP-bound one as Authorization: DPoP with a proof for this request.
func (a *API) serviceAccount(r *http.Request, scheme, raw string) (principal.User, error) {
	ctx := r.Context()
	fail := func(reason, msg string, cause error) error {
		return &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthenticated", Reason: reason, Description: msg, Cause: cause,
			Header: http.Header{"WWW-Authenticate": {scheme + ` realm="mandate", error="invalid_token"`}}}
	}
	c, err := a.cfg.Keys.ParseAccess(ctx, raw, a.cfg.Issuer)
	if errors.Is(err, token.ErrInvalidToken) {
		return principal.User{}, fail("bad_token", "the token is not a valid, unexpired token of this server: get a new one", err)
	}
	if err != nil {
		return principal.User{}, err
	}
	if !principal.IsServiceAccountID(c.Subject) || !c.Audience.Contains(a.cfg.Issuer) {
		return principal.User{}, fail("not_service_token", "the management API takes an API token (mandate login) or a service account's federated token for "+a.cfg.Issuer, nil)
	}
	switch {
	case c.Cnf.JKT == "" && scheme != "Bearer":
		return principal.User{}, fail("unbound", "this token is not DPoP-bound: send it as Authorization: Bearer", nil)
	case c.Cnf.JKT != "" && scheme != "DPoP":
		return principal.User{}, fail("bearer", "this token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof", nil)
	case c.Cnf.JKT != "":
		if err := a.checkProof(ctx, r, raw, c.Cnf.JKT); err != nil {
			return principal.User{}, fail("dpop", err.Error(), err)
		}
	}
	if revoked, err := a.cfg.Tokens.IsTokenRevoked(ctx, c.JTI); err != nil {
		return principal.User{}, err
	} else if revoked {
		return principal.User{}, fail("revoked", "the token is revoked", nil)
	}
	svc, err := a.cfg.Principals.ActiveServiceAccount(ctx, c.Subject)
	if err != nil {
		return principal.User{}, authRefusal(err, fail)
	}
	rule, err := a.cfg.Federation.ActiveRule(ctx, c.ClientID)
	if err != nil {
		return principal.User{}, authRefusal(err, fail)
	}
	return principal.User{ID: svc.ID, Name: svc.Name, CreatedAt: svc.CreatedAt,
		Grantable: &principal.Grantable{Scopes: strings.Fields(c.Scope), Resources: rule.Resources}}, nil
}

// authRefusal turns a domain refusal met while authenticating into 401.
func authRefusal(err error, fail func(reason, msg string, cause error) error) error {
	if de, ok := apperr.As(err); ok {
		return fail(de.Reason, de.Msg, err)
	}
	return err
}

func (a *API) checkProof(ctx context.Context, r *http.Request, raw, jkt string) error {
	hdrs := r.Header.Values(dpop.HeaderName)
	if len(hdrs) != 1 {
		return errors.New("send exactly one DPoP proof header with a DPoP-bound token")
	}
	_, err := a.cfg.DPoP.Check(ctx, hdrs[0], dpop.Request{Method: r.Method, URL: a.cfg.Issuer + r.URL.EscapedPath(), AccessToken: raw, JKT: jkt})
	return err
}
