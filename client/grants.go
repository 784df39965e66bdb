package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Limits are a grant's limits.
type Limits struct {
	MaxTaskTTL         time.Duration    // the longest a task under the grant may live
	MaxTokenTTL        time.Duration    // the longest one of its access tokens may live
	MaxDepth           int              // agents in a delegation chain, the first included
	AllowSubdelegation bool             // whether a task may be handed on to another agent
	Budget             map[string]int64 // e.g. {"calls": 500, "task_calls": 50}: see docs/delegation.md#budgets
}

// Grant is a standing delegation to the agent: a principal lets it act with Scopes on Resources.
type Grant struct {
	ID                   string // gr_…
	PrincipalID          string // who the agent acts for
	AgentID              string
	Scopes               []string
	Resources            []string
	AuthorizationDetails []json.RawMessage
	Limits
	Status    string // active, revoked or expired
	CreatedAt time.Time
	ExpiresAt time.Time
	RequestID string // the grant request it answers, if any

	// Token is the grant token: the subject token that starts a task (StartTask). It is bound to
	// the agent's key; fetch it fresh with Grants rather than storing it.
	Token string
}

// grantWire is a grant as the server sends it.
type grantWire struct {
	GrantID              string            `json:"grant_id"`
	PrincipalID          string            `json:"principal_id"`
	AgentID              string            `json:"agent_id"`
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details"`
	MaxTaskTTL           int64             `json:"max_task_ttl"`
	MaxTokenTTL          int64             `json:"max_token_ttl"`
	MaxDepth             int               `json:"max_depth"`
	AllowSubdelegation   bool              `json:"allow_subdelegation"`
	Budget               map[string]int64  `json:"budget"`
	Status               string            `json:"status"`
	CreatedAt            time.Time         `json:"created_at"`
	ExpiresAt            time.Time         `json:"expires_at"`
	RequestID            string            `json:"request_id"`
	GrantToken           string            `json:"grant_token"`
}

func (w grantWire) grant() Grant {
	return Grant{ID: w.GrantID, PrincipalID: w.PrincipalID, AgentID: w.AgentID, Scopes: w.Scopes, Resources: w.Resources,
		AuthorizationDetails: w.AuthorizationDetails, Limits: Limits{
			MaxTaskTTL: time.Duration(w.MaxTaskTTL) * time.Second, MaxTokenTTL: time.Duration(w.MaxTokenTTL) * time.Second,
			MaxDepth: w.MaxDepth, AllowSubdelegation: w.AllowSubdelegation, Budget: w.Budget},
		Status: w.Status, CreatedAt: w.CreatedAt, ExpiresAt: w.ExpiresAt, RequestID: w.RequestID, Token: w.GrantToken}
}

// Grants lists the agent's grants, each with a fresh grant token (GET {issuer}/v1/agent/grants).
// Like every agent route of the server it needs the source's tokens to be for the server itself:
// leave Config.Resource empty.
func (s *TokenSource) Grants(ctx context.Context) ([]Grant, error) {
	var out struct {
		Grants []grantWire `json:"grants"`
	}
	if err := s.call(ctx, http.MethodGet, "/v1/agent/grants", nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	grants := make([]Grant, 0, len(out.Grants))
	for _, g := range out.Grants {
		grants = append(grants, g.grant())
	}
	return grants, nil
}

// Grant returns the agent's grant id with a fresh grant token.
func (s *TokenSource) Grant(ctx context.Context, id string) (*Grant, error) {
	grants, err := s.Grants(ctx)
	if err != nil {
		return nil, err
	}
	for _, g := range grants {
		if g.ID == id {
			return &g, nil
		}
	}
	return nil, fmt.Errorf("client: grant %q is not among the agent's grants", id)
}

// GrantRequest is what an agent asks its owner for. Zero limits take the server's defaults.
type GrantRequest struct {
	Scopes               []string
	Resources            []string
	AuthorizationDetails []json.RawMessage
	Limits
	Reason string // shown to the owner
}

// RequestGrant asks the agent's owner for a grant (POST {issuer}/v1/agent/grant-requests) and
// returns the request's id, for PollGrant.
func RequestGrant(ctx context.Context, ts *TokenSource, req GrantRequest) (string, error) {
	body := map[string]any{
		"scopes": req.Scopes, "resources": req.Resources, "reason": req.Reason,
		"max_task_ttl": seconds(req.MaxTaskTTL), "max_token_ttl": seconds(req.MaxTokenTTL),
		"max_depth": req.MaxDepth, "allow_subdelegation": req.AllowSubdelegation,
	}
	if len(req.AuthorizationDetails) > 0 {
		body["authorization_details"] = req.AuthorizationDetails
	}
	if len(req.Budget) > 0 {
		body["budget"] = req.Budget
	}
	var out struct {
		RequestID string `json:"request_id"`
	}
	if err := ts.call(ctx, http.MethodPost, "/v1/agent/grant-requests", body, http.StatusCreated, &out); err != nil {
		return "", err
	}
	if out.RequestID == "" {
		return "", errors.New("client: the server's answer has no request_id")
	}
	return out.RequestID, nil
}

// pollInterval is the wait between polls (RFC 8628 §3.5: 5 seconds unless told otherwise), and
// what slow_down adds to it. Tests shorten it.
var pollInterval = 5 * time.Second

// PollGrant waits until the owner answers grant request id, polling GET
// {issuer}/v1/agent/grant-requests/{id} as RFC 8628 polls a device code: every interval while the
// answer is authorization_pending, 5 seconds slower after each slow_down. It returns the grant
// (with its token) once approved; a denial or a lapsed request is an *Error with Code
// access_denied or expired_token. It stops when ctx ends.
func PollGrant(ctx context.Context, ts *TokenSource, id string) (*Grant, error) {
	interval := pollInterval
	path := "/v1/agent/grant-requests/" + pathEscape(id)
	for {
		var g grantWire
		err := ts.call(ctx, http.MethodGet, path, nil, http.StatusOK, &g)
		if err == nil {
			out := g.grant()
			return &out, nil
		}
		var e *Error
		if !errors.As(err, &e) {
			return nil, err
		}
		switch e.Code {
		case "authorization_pending":
		case "slow_down":
			interval += pollInterval
		default:
			return nil, err
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// EndTask completes task id of the agent, and every task under it (POST
// {issuer}/v1/agent/tasks/{id}/end). Ending a task that has already ended is not an error.
func EndTask(ctx context.Context, ts *TokenSource, id string) error {
	return ts.call(ctx, http.MethodPost, "/v1/agent/tasks/"+pathEscape(id)+"/end", nil, http.StatusOK, nil)
}

func seconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// call sends a JSON request to one of the server's agent routes with the source's token and a
// DPoP proof, and decodes an answer with status want into out (if not nil); any other status is
// an *Error.
func (s *TokenSource) call(ctx context.Context, method, path string, in any, want int, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := endpoint(s.cfg.Issuer, path)
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := &http.Client{Transport: s.Transport(s.hc.Transport), Timeout: s.hc.Timeout}
	resp, err := hc.Do(req)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return e // the token source's refusal, not a network failure
		}
		return fmt.Errorf("client: %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		return ReadError(resp)
	}
	return decodeJSON(resp, out)
}
