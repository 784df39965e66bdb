// Package api is the management and agent API under /v1: agent registration, claim, revocation
// and key rotation, users and API tokens, signing keys, the revocation feed, and the agent
// "whoami" resource protected by the verify SDK.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/ratelimit"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// Config wires the API.
type Config struct {
	Issuer     string
	Registry   *registry.Service
	Agents     registry.Store
	Principals *principal.Service
	Keys       *token.Keys
	Tokens     token.Store
	Audit      audit.Store
	Delegation *delegation.Service
	Vault      *vault.Service
	Federation *federation.Service
	Trail      *audit.Checkpointer             // the audit chain's signed checkpoints and verification
	DPoP       *dpop.Checker                   // proofs of service accounts' DPoP-bound tokens
	AgentAuth  func(http.Handler) http.Handler // verify middleware for agent-authenticated routes
	// Per client address: registrations, and claims with new claim codes. nil = no limit.
	RegisterLimit *ratelimit.Limiter
	ClaimLimit    *ratelimit.Limiter
	Log           *slog.Logger
	Now           func() time.Time
	// RevocationWakeup wakes the revocation stream when the log may have grown; nil = the
	// stream reads the log every 15 seconds.
	RevocationWakeup *Wakeup
}

// API serves /v1.
type API struct{ cfg Config }

// New returns the API.
func New(cfg Config) *API {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &API{cfg: cfg}
}

// Register adds the /v1 routes to mux.
func (a *API) Register(mux *http.ServeMux) {
	h := func(f httpapi.HandlerFunc) http.Handler { return httpapi.Handle(a.cfg.Log, f) }
	u := func(f userHandler) http.Handler { return h(a.withUser(f)) }
	mux.Handle("GET /v1/openapi.json", h(a.openAPI))
	mux.Handle("POST /v1/agents", h(a.limited(a.cfg.RegisterLimit, audit.ActionAgentRegister, "registrations", a.registerAgent)))
	mux.Handle("GET /v1/agents", u(a.listAgents))
	mux.Handle("POST /v1/agents/claim", h(a.limited(a.cfg.ClaimLimit, audit.ActionAgentClaim, "claims", a.withUser(a.claimAgent))))
	mux.Handle("POST /v1/agents/{id}/claim-code", h(a.limited(a.cfg.ClaimLimit, audit.ActionAgentClaimCode, "claim codes", a.newClaimCode)))
	mux.Handle("GET /v1/agents/{ref}", u(a.getAgent))
	mux.Handle("POST /v1/agents/{ref}/revoke", u(a.revokeAgent))
	mux.Handle("POST /v1/agents/{id}/keys", h(a.rotateAgentKey))
	mux.Handle("POST /v1/agents/{ref}/keys/revoke", u(a.revokeAgentKey))
	mux.Handle("GET /v1/revocations", h(a.revocations))
	mux.Handle("GET /v1/whoami", u(a.whoami))
	mux.Handle("POST /v1/login", h(a.login))
	mux.Handle("GET /v1/users", u(a.listUsers))
	mux.Handle("POST /v1/users", u(a.createUser))
	mux.Handle("GET /v1/tokens", u(a.listTokens))
	mux.Handle("POST /v1/tokens", u(a.createToken))
	mux.Handle("DELETE /v1/tokens/{id}", u(a.revokeToken))
	mux.Handle("GET /v1/keys", u(a.listKeys))
	mux.Handle("POST /v1/grants", u(a.createGrant))
	mux.Handle("GET /v1/grants", u(a.listGrants))
	mux.Handle("GET /v1/grants/{id}", u(a.getGrant))
	mux.Handle("POST /v1/grants/{id}/revoke", u(a.revokeGrant))
	mux.Handle("GET /v1/grant-requests", u(a.listGrantRequests))
	mux.Handle("POST /v1/grant-requests/{id}/approve", u(a.approveGrantRequest))
	mux.Handle("POST /v1/grant-requests/{id}/deny", u(a.denyGrantRequest))
	mux.Handle("GET /v1/tasks", u(a.listTasks))
	mux.Handle("GET /v1/tasks/{id}", u(a.getTask))
	mux.Handle("POST /v1/tasks/{id}/end", u(a.endTask(false)))
	mux.Handle("POST /v1/tasks/{id}/revoke", u(a.endTask(true)))
	mux.Handle("POST /v1/upstreams", u(a.createUpstream))
	mux.Handle("GET /v1/upstreams", u(a.listUpstreams))
	mux.Handle("GET /v1/upstreams/{name}", u(a.getUpstream))
	mux.Handle("PUT /v1/upstreams/{name}/routes", u(a.updateUpstreamRoutes))
	mux.Handle("DELETE /v1/upstreams/{name}", u(a.deleteUpstream))
	mux.Handle("PUT /v1/upstreams/{name}/secrets/{kind}", u(a.setUpstreamSecret))
	agent := func(f httpapi.HandlerFunc) http.Handler { return a.cfg.AgentAuth(h(f)) }
	mux.Handle("GET /v1/agent/grants", agent(a.agentGrants))
	mux.Handle("POST /v1/agent/grant-requests", agent(a.agentRequestGrant))
	mux.Handle("GET /v1/agent/grant-requests/{id}", agent(a.agentPollGrantRequest))
	mux.Handle("POST /v1/agent/tasks/{id}/end", agent(a.agentEndTask))
	mux.Handle("GET /v1/agent/whoami", agent(a.agentWhoami))
	mux.Handle("POST /v1/keys/rotate", u(a.rotateKeys))
	mux.Handle("POST /v1/service-accounts", u(a.createServiceAccount))
	mux.Handle("GET /v1/service-accounts", u(a.listServiceAccounts))
	mux.Handle("GET /v1/service-accounts/{ref}", u(a.getServiceAccount))
	mux.Handle("POST /v1/service-accounts/{ref}/disable", u(a.setServiceAccountDisabled(true)))
	mux.Handle("POST /v1/service-accounts/{ref}/enable", u(a.setServiceAccountDisabled(false)))
	mux.Handle("POST /v1/federation/issuers", u(a.addIssuer))
	mux.Handle("GET /v1/federation/issuers", u(a.listIssuers))
	mux.Handle("DELETE /v1/federation/issuers", u(a.removeIssuer))
	mux.Handle("POST /v1/federation/rules", u(a.addRule))
	mux.Handle("GET /v1/federation/rules", u(a.listRules))
	mux.Handle("GET /v1/federation/rules/{id}", u(a.getRule))
	mux.Handle("POST /v1/federation/rules/{id}/disable", u(a.setRuleDisabled(true)))
	mux.Handle("POST /v1/federation/rules/{id}/enable", u(a.setRuleDisabled(false)))
	mux.Handle("POST /v1/federation/rules/{id}/test", u(a.testRule))
	mux.Handle("GET /v1/audit", u(a.listAudit))
	mux.Handle("GET /v1/audit/explain/{id}", u(a.explainAudit))
	mux.Handle("GET /v1/audit/mine", u(a.mineAudit))
	mux.Handle("GET /v1/audit/checkpoint-keys", h(a.checkpointKeys))
	mux.Handle("GET /v1/audit/checkpoints", u(a.listCheckpoints))
	mux.Handle("POST /v1/audit/checkpoints", u(a.signCheckpoint))
	mux.Handle("POST /v1/audit/verify", u(a.verifyAudit))
}

// limited refuses a request past its client address's rate (429 with Retry-After in whole
// seconds, and a description that says when to retry) before f reads anything, and records the
// refusal as an anonymous denial (the audit aggregator bounds what a flood of them costs).
func (a *API) limited(l *ratelimit.Limiter, action, what string, f httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		ok, retry := l.Allow(ratelimit.Client(r.Context()))
		if ok {
			return f(w, r)
		}
		secs := int64(retry / time.Second)
		desc := fmt.Sprintf("too many %s from this address: retry after %d seconds", what, secs)
		ev := audit.New(a.cfg.Now(), requestID(r.Context()), action)
		ev.ActorType, ev.Reason, ev.Detail = audit.ActorAnonymous, "rate_limited", desc
		if err := a.cfg.Audit.AppendEvent(context.WithoutCancel(r.Context()), ev); err != nil {
			a.cfg.Log.ErrorContext(r.Context(), "record rate limit refusal", slog.String("error", err.Error()))
		}
		return &httpapi.Error{Status: http.StatusTooManyRequests, Code: "rate_limited", Description: desc,
			Header: http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}}
	}
}

type userHandler func(w http.ResponseWriter, r *http.Request, u principal.User) error

// withUser authenticates the management API token (Authorization: Bearer).
func (a *API) withUser(f userHandler) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		scheme, secret, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if (scheme != "Bearer" && scheme != "DPoP") || secret == "" {
			return &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthenticated", Reason: "missing",
				Description: "send an API token as Authorization: Bearer <token>; get one with mandate login",
				Header:      http.Header{"WWW-Authenticate": {`Bearer realm="mandate"`}}}
		}
		if scheme == "DPoP" || strings.Count(secret, ".") == 2 {
			// A JWT: a service account's federated token.
			u, err := a.serviceAccount(r, scheme, secret)
			if err != nil {
				return err
			}
			return f(w, r, u)
		}
		u, err := a.cfg.Principals.Authenticate(r.Context(), secret)
		if err != nil {
			return invalidToken(err)
		}
		return f(w, r, u)
	}
}

// invalidToken is the answer to a refused API token: 401 with a Bearer challenge.
func invalidToken(err error) error {
	if de, ok := apperr.As(err); ok && de.Kind == apperr.Unauthenticated {
		return &httpapi.Error{Status: http.StatusUnauthorized, Code: "unauthenticated", Reason: de.Reason, Description: de.Msg,
			Header: http.Header{"WWW-Authenticate": {`Bearer realm="mandate", error="invalid_token"`}}, Cause: err}
	}
	return err
}

// decodeJSON reads a small JSON body, refusing unknown fields so typos are not ignored, and a
// member given twice in any object: encoding/json would keep the last, so {"budget": {"calls":
// 3}, "budget": {"calls": 1000}} would mean other than a reader of its start sees.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		return apperr.Wrap(err, apperr.Invalid, "malformed", "the body must be a JSON object of the documented fields (at most 64 KiB): %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	var ne *delegation.NarrowError // a budget's own refusal says what was wrong and what to write
	if errors.As(err, &ne) {
		return apperr.Wrap(err, apperr.Invalid, ne.Limit, "%s", ne.Msg)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return apperr.Wrap(err, apperr.Invalid, "malformed", "the body must be a JSON object of the documented fields (at most 64 KiB): %v", err)
	}
	if k, dup := duplicateMember(raw); dup {
		return apperr.New(apperr.Invalid, "malformed", "the body gives %q twice in one object: give each member once", apperr.Clip(k, 80))
	}
	return nil
}

// duplicateMember returns the first member name given twice in one object of the JSON text raw
// (names compared as decoded, so "\u0063alls" is "calls"). Text that is not JSON has none:
// the decoder reports it.
func duplicateMember(raw []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()             // a number too large for a float64 would stop the walk
	var stack []map[string]bool // the names seen in each open object; nil for an array
	name := false               // the next token is a member name
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		switch tok {
		case json.Delim('{'):
			stack, name = append(stack, map[string]bool{}), true
			continue
		case json.Delim('['):
			stack, name = append(stack, nil), false
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		default:
			if k, ok := tok.(string); ok && name {
				if stack[len(stack)-1][k] {
					return k, true
				}
				stack[len(stack)-1][k], name = true, false
				continue
			}
		}
		// A value ended: in an object, a member name comes next.
		name = len(stack) > 0 && stack[len(stack)-1] != nil
	}
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) (string, error) {
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return "", apperr.Wrap(err, apperr.Invalid, "too_large", "the body is larger than %d bytes", limit)
	}
	return string(b), nil
}

func requestID(ctx context.Context) string { return httpapi.RequestID(ctx) }

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// optDuration parses an optional Go duration field ("" = 0).
func optDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, apperr.New(apperr.Invalid, field, "%s %q: want a positive duration such as 10m or 720h", field, apperr.Clip(s, 40))
	}
	return d, nil
}
