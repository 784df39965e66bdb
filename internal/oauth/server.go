package oauth

import (
	"context"
	"errors"
	"fmt"
	"github.com/mandate-dev/mandate/internal/cpuslot"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
)

// Endpoint paths, relative to the issuer.
const (
	PathToken      = "/oauth/token"
	PathJWKS       = "/oauth/jwks"
	PathIntrospect = "/oauth/introspect"
	PathRevoke     = "/oauth/revoke"
	PathMetadata   = "/.well-known/oauth-authorization-server"
)

// Config wires the OAuth endpoints. The edge holds services only: issuing, exchanging and
// revoking tokens each commit their change and its audit record in the domain.
type Config struct {
	Issuer     string
	Keys       *token.Keys     // verifying our tokens, the JWKS
	Issuance   *token.Issuance // minting, recording and revoking access tokens
	Registry   *registry.Service
	Principals *principal.Service
	Audit      audit.Store // refusals, which change nothing else
	Delegation *delegation.Service
	Federation *federation.Service // jwt-bearer assertions from trusted issuers
	JTIs       dpop.ReplayStore    // single-use client assertion ids, shared by replicas
	DPoP       *dpop.Checker       // proofs at the token endpoint (nonces required when configured)
	Nonces     *dpop.Nonces        // nil when nonces are off
	ClockSkew  time.Duration
	Metrics    *Metrics
	Log        *slog.Logger
	Now        func() time.Time

	// SharedProofs uses each proof's id up in the database too, in the issue's transaction, so
	// a proof one replica accepted is refused by every other. false (one process: DPoP's own
	// replay store is complete) keeps proof ids in memory only.
	SharedProofs bool
	// CPU bounds how many token requests compute at once (see package cpuslot); nil bounds
	// nothing.
	CPU *cpuslot.Limiter
}

// Metrics count token decisions.
type Metrics struct {
	issued *prometheus.CounterVec
	denied *prometheus.CounterVec
}

// NewMetrics registers the token counters on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_tokens_issued_total", Help: "Access tokens issued, by grant type.",
		}, []string{"grant_type"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_tokens_denied_total", Help: "Token requests refused, by grant type and reason.",
		}, []string{"grant_type", "reason"}),
	}
	reg.MustRegister(m.issued, m.denied)
	return m
}

// Server serves the OAuth endpoints.
type Server struct {
	cfg    Config
	grants map[string]grant
}

// New returns the OAuth server with every grant it supports.
func New(cfg Config) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = 30 * time.Second
	}
	s := &Server{cfg: cfg, grants: map[string]grant{}}
	for _, g := range []grant{&clientCredentials{s: s}, &tokenExchange{s: s}, &jwtBearer{s: s}} {
		s.grants[g.Type()] = g
	}
	return s
}

func (s *Server) tokenEndpoint() string { return s.cfg.Issuer + PathToken }

// grant is one grant type. The endpoint runs the shared steps (form parsing, DPoP, client
// authentication when ClientAuth is true, audit, metrics) before Issue, so no grant can skip them.
type grant interface {
	Type() string
	ClientAuth() bool
	Issue(ctx context.Context, req *tokenRequest) (*tokenResponse, error)
}

// proofOptional is a grant that may issue without a DPoP proof (an unbound token).
type proofOptional interface{ ProofOptional() bool }

// replayRefuser is a grant that answers a used-up single-use id in its own words.
type replayRefuser interface {
	Replayed(ctx context.Context, err error) error
}

// tokenRequest is what the shared steps established.
type tokenRequest struct {
	Form   url.Values
	Proof  *dpop.Proof       // the verified DPoP proof; the new token is bound to its key. nil only for a proofOptional grant
	Client registry.Agent    // the authenticated agent, for grants with ClientAuth
	Uses   []token.SingleUse // single-use ids committed with the token's audit event
	Event  *audit.Event      // the grant fills in who and what; the endpoint writes it
	// Commit, when a grant sets it, commits the token through the domain service that owns what
	// it rests on (delegation, for an exchange), instead of Issuance.Record.
	Commit func(ctx context.Context, ev audit.Event) error
	// IssueAction names the success in the audit trail; empty = token.issue.
	IssueAction string
}

type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
	IssuedTokenType string `json:"issued_token_type,omitempty"`
	// Token exchange only: the task the token belongs to and when the task ends (unix seconds),
	// additional response parameters as RFC 8693 §2.2.1 allows.
	TaskID        string `json:"txn,omitempty"`
	TaskExpiresAt int64  `json:"task_expires_at,omitempty"`
}

const maxFormBytes = 64 << 10

// Token is the token endpoint (RFC 6749 §3.2).
func (s *Server) Token(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ev := audit.New(s.cfg.Now(), httpapi.RequestID(ctx), audit.ActionTokenDeny)
	ev.ActorType = audit.ActorAnonymous
	grantType := "unknown"
	resp, err := s.token(w, r, &ev, &grantType)
	if s.cfg.Nonces != nil {
		w.Header().Set(dpop.NonceHeaderName, s.cfg.Nonces.Current())
	}
	if err != nil {
		reason := httpapi.ReasonOf(err)
		s.cfg.Metrics.denied.WithLabelValues(grantType, reason).Inc()
		if httpapi.AsError(err).Code == CodeUseDPoPNonce {
			// A nonce challenge is a step of the protocol every new client meets once, not a
			// refusal of authority: counted, but kept out of the audit trail.
			return err
		}
		if httpapi.Unavailable(err) {
			// The database did not answer: nothing was decided about the caller, and a denial
			// written now would wait for the same database (the log has the cause).
			return err
		}
		ev.Reason = reason
		ev.Detail = httpapi.AsError(err).Description
		if d := httpapi.AsError(err).Audit; d != "" {
			ev.Detail = d
		}
		if aerr := s.cfg.Audit.AppendEvent(context.WithoutCancel(ctx), ev); aerr != nil {
			return errors.Join(err, fmt.Errorf("record denial: %w", aerr))
		}
		return err
	}
	s.cfg.Metrics.issued.WithLabelValues(grantType).Inc()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	httpapi.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) token(w http.ResponseWriter, r *http.Request, ev *audit.Event, grantType *string) (*tokenResponse, error) {
	ctx := r.Context()
	form, err := parseForm(w, r)
	if err != nil {
		return nil, err
	}
	// From here the request computes until it waits for its commit (which yields the slot):
	// taken after the body is read, so a slow client holds no slot.
	ctx, leave := s.cfg.CPU.Enter(ctx)
	defer leave()
	g, ok := s.grants[form.Get("grant_type")]
	if !ok {
		return nil, badRequest(CodeUnsupportedGrantType, "grant_type", "grant_type must be one of: "+strings.Join(s.grantTypes(), ", "))
	}
	*grantType = g.Type()
	req := &tokenRequest{Form: form, Event: ev}
	if o, ok := g.(proofOptional); !ok || !o.ProofOptional() || len(r.Header.Values(dpop.HeaderName)) > 0 {
		proof, err := s.checkProof(ctx, r)
		if err != nil {
			return nil, err
		}
		req.Proof = proof
		ev.KeyJKT = proof.JKT
		// With replicas the proof's id is also used up in the database with the issue, so a
		// proof captured at one replica cannot be replayed at another (each replica's replay
		// cache is its own); one process has its checker's cache alone.
		if s.cfg.SharedProofs {
			req.Uses = append(req.Uses, token.SingleUse{ID: "dpop:" + proof.ReplayID, ExpiresAt: proof.ReplayUntil})
		}
	}
	if g.ClientAuth() {
		agent, use, err := s.authenticateClient(ctx, form)
		if agent.ID != "" {
			ev.AgentID, ev.ActorType, ev.ActorID, ev.PrincipalID = agent.ID, audit.ActorAgent, agent.ID, agent.OwnerID
			ev.ActorHandle = agent.Handle
		}
		if err != nil {
			return nil, err
		}
		req.Client = agent
		req.Uses = append(req.Uses, use)
	}
	resp, err := g.Issue(ctx, req)
	if err != nil {
		return nil, err
	}
	// The token is returned only once its record is stored (invariant: nothing lost), and the
	// client assertion is used up in the same transaction.
	issued := *ev
	issued.Action = audit.ActionTokenIssue
	if req.IssueAction != "" {
		issued.Action = req.IssueAction
	}
	commit := func(ctx context.Context, ev audit.Event) error { return s.cfg.Issuance.Record(ctx, req.Uses, ev) }
	if req.Commit != nil {
		commit = req.Commit
	}
	if err := commit(ctx, issued); err != nil {
		var refused *httpapi.Error
		if errors.As(err, &refused) {
			return nil, err
		}
		if errors.Is(err, dpop.ErrReplay) {
			if rp, ok := g.(replayRefuser); ok {
				return nil, rp.Replayed(ctx, err)
			}
			if g.ClientAuth() {
				return nil, assertionReplayed(err)
			}
			e := badRequest(CodeInvalidRequest, "actor_token_replay", "the actor token was already used: sign a fresh one for every exchange")
			e.Cause = err
			return nil, e
		}
		ev.Outcome = audit.OutcomeFailure
		return nil, fmt.Errorf("record token issue: %w", err)
	}
	return resp, nil
}

func parseForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	if r.Method != http.MethodPost {
		return nil, badRequest(CodeInvalidRequest, "method", "use POST")
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		return nil, badRequest(CodeInvalidRequest, "content_type", "the body must be application/x-www-form-urlencoded (RFC 6749 §3.2)")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return nil, badRequest(CodeInvalidRequest, "form", "the form body is malformed or larger than 64 KiB")
	}
	for k, v := range r.PostForm {
		if len(v) > 1 && k != "resource" && k != "audience" {
			return nil, badRequest(CodeInvalidRequest, "duplicate_param", "parameter "+k+" is repeated (RFC 6749 §3.2)")
		}
	}
	return r.PostForm, nil
}

// checkProof verifies the DPoP proof of a token request: required, for POST at the token
// endpoint's configured URL (not the Host header, which the client controls).
func (s *Server) checkProof(ctx context.Context, r *http.Request) (*dpop.Proof, error) {
	hdrs := r.Header.Values(dpop.HeaderName)
	if len(hdrs) != 1 {
		return nil, badRequest(CodeInvalidDPoPProof, "dpop_missing", "send exactly one DPoP header: every token is bound to a key (RFC 9449)")
	}
	proof, err := s.cfg.DPoP.Check(ctx, hdrs[0], dpop.Request{Method: r.Method, URL: s.tokenEndpoint()})
	if err != nil {
		return nil, dpopError(err, s.cfg.Nonces)
	}
	return proof, nil
}

// dpopError turns a proof refusal into the token endpoint's 400 response (RFC 9449 §5, §8).
func dpopError(err error, nonces *dpop.Nonces) error {
	var de *dpop.Error
	if !errors.As(err, &de) {
		return fmt.Errorf("check DPoP proof: %w", err)
	}
	e := badRequest(de.Code, "dpop_"+de.Reason, de.Description)
	if de.Code == CodeUseDPoPNonce && nonces != nil {
		e.Header = http.Header{dpop.NonceHeaderName: {nonces.Current()}}
	}
	return e
}

func (s *Server) grantTypes() []string {
	out := make([]string, 0, len(s.grants))
	for t := range s.grants {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// principalFromBearer authenticates a management API token, for introspection and revocation
// by people.
func (s *Server) principalFromBearer(ctx context.Context, r *http.Request) (principal.User, bool, error) {
	auth := r.Header.Get("Authorization")
	secret, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return principal.User{}, false, nil
	}
	u, err := s.cfg.Principals.Authenticate(ctx, secret)
	if err != nil {
		if _, ok := apperr.As(err); ok {
			e := invalidClient("bad_api_token", "the API token is unknown, revoked or expired", err)
			e.Header = http.Header{"WWW-Authenticate": {`Bearer realm="mandate", error="invalid_token"`}}
			return principal.User{}, true, e
		}
		return principal.User{}, true, err
	}
	return u, true, nil
}
