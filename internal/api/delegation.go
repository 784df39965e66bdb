package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/httpapi"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/verify"
)

// LimitsJSON are a grant's limits; durations in seconds.
type LimitsJSON struct {
	MaxTaskTTL         int64      `json:"max_task_ttl,omitempty"`
	MaxTokenTTL        int64      `json:"max_token_ttl,omitempty"`
	MaxDepth           int        `json:"max_depth,omitempty"`
	AllowSubdelegation bool       `json:"allow_subdelegation"`
	Budget             BudgetJSON `json:"budget,omitempty"`
}

// BudgetJSON is a budget in a request body, read by delegation.ParseBudgetJSON: a key given
// twice, a null or a value not written as a plain whole number is refused, the same as at the
// token endpoint and in the CLI, rather than read some other way (the last duplicate, 0).
type BudgetJSON map[string]int64

// UnmarshalJSON reads a budget object; "budget": null is no budget, as for any map.
func (b *BudgetJSON) UnmarshalJSON(raw []byte) error {
	if string(raw) == "null" {
		*b = nil
		return nil
	}
	m, err := delegation.ParseBudgetJSON(raw)
	*b = m
	return err
}

func limitsJSON(l delegation.Limits) LimitsJSON {
	return LimitsJSON{MaxTaskTTL: int64(l.MaxTaskTTL.Seconds()), MaxTokenTTL: int64(l.MaxTokenTTL.Seconds()),
		MaxDepth: l.MaxDepth, AllowSubdelegation: l.AllowSubdelegation, Budget: l.Budget}
}

func (l LimitsJSON) limits() delegation.Limits {
	return delegation.Limits{MaxTaskTTL: time.Duration(l.MaxTaskTTL) * time.Second, MaxTokenTTL: time.Duration(l.MaxTokenTTL) * time.Second,
		MaxDepth: l.MaxDepth, AllowSubdelegation: l.AllowSubdelegation, Budget: l.Budget}
}

// GrantJSON is a grant as the API shows it. GrantToken is set only where the agent receives it.
type GrantJSON struct {
	GrantID              string            `json:"grant_id"`
	PrincipalID          string            `json:"principal_id"`
	AgentID              string            `json:"agent_id"`
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	LimitsJSON
	Status     string     `json:"status"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	RequestID  string     `json:"request_id,omitempty"`
	GrantToken string     `json:"grant_token,omitempty"`
	// BudgetUsed: GET /v1/grants/{id} only, what each grant total (calls, calls:<upstream>) counted.
	BudgetUsed map[string]int64 `json:"budget_used,omitempty"`
}

func grantJSON(g delegation.Grant, now time.Time) GrantJSON {
	status := string(g.Status)
	if g.Status == delegation.GrantActive && !now.Before(g.ExpiresAt) {
		status = "expired"
	}
	return GrantJSON{GrantID: g.ID, PrincipalID: g.PrincipalID, AgentID: g.AgentID, Scopes: g.Scopes, Resources: g.Resources,
		AuthorizationDetails: g.AuthorizationDetails, LimitsJSON: limitsJSON(g.Limits), Status: status,
		CreatedAt: g.CreatedAt.UTC(), ExpiresAt: g.ExpiresAt.UTC(), RevokedAt: timePtr(g.RevokedAt), RequestID: g.RequestID,
		BudgetUsed: g.BudgetUsed}
}

// SpecJSON is the body of a grant, a grant request, or an approval that narrows a request.
type SpecJSON struct {
	Agent                string            `json:"agent,omitempty"` // id or @handle, for POST /v1/grants
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	LimitsJSON
	ExpiresIn int64  `json:"expires_in,omitempty"` // seconds
	Reason    string `json:"reason,omitempty"`     // grant requests
}

func (s SpecJSON) spec() delegation.Spec {
	var scopes []string
	for _, sc := range s.Scopes {
		scopes = append(scopes, strings.Fields(sc)...)
	}
	return delegation.Spec{Scopes: scopes, Resources: s.Resources, AuthorizationDetails: s.AuthorizationDetails,
		Limits: s.LimitsJSON.limits(), ExpiresIn: time.Duration(s.ExpiresIn) * time.Second}
}

// TaskJSON is a task as the API shows it.
type TaskJSON struct {
	TaskID               string            `json:"task_id"`
	GrantID              string            `json:"grant_id"`
	ParentID             string            `json:"parent_id,omitempty"`
	RootID               string            `json:"root_id"`
	Depth                int               `json:"depth"`
	PrincipalID          string            `json:"principal_id"`
	AgentID              string            `json:"agent_id"`
	InstanceJKT          string            `json:"instance_jkt,omitempty"`
	Purpose              string            `json:"purpose,omitempty"`
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	Budget               map[string]int64  `json:"budget,omitempty"`
	Status               string            `json:"status"`
	CreatedAt            time.Time         `json:"created_at"`
	ExpiresAt            time.Time         `json:"expires_at"`
	EndedAt              *time.Time        `json:"ended_at,omitempty"`
}

func taskJSON(t delegation.Task, now time.Time) TaskJSON {
	status := string(t.Status)
	if t.Status == delegation.TaskActive && !now.Before(t.ExpiresAt) {
		status = "expired"
	}
	return TaskJSON{TaskID: t.ID, GrantID: t.GrantID, ParentID: t.ParentID, RootID: t.RootID, Depth: t.Depth,
		PrincipalID: t.PrincipalID, AgentID: t.AgentID, InstanceJKT: t.InstanceJKT, Purpose: t.Purpose, Scopes: t.Scopes,
		Resources: t.Resources, AuthorizationDetails: t.AuthorizationDetails, Budget: t.Budget, Status: status,
		CreatedAt: t.CreatedAt.UTC(), ExpiresAt: t.ExpiresAt.UTC(), EndedAt: timePtr(t.EndedAt)}
}

// GrantRequestJSON is an agent's request for a grant.
type GrantRequestJSON struct {
	RequestID            string            `json:"request_id"`
	AgentID              string            `json:"agent_id"`
	OwnerID              string            `json:"owner_id"`
	Scopes               []string          `json:"scopes"`
	Resources            []string          `json:"resources"`
	AuthorizationDetails []json.RawMessage `json:"authorization_details,omitempty"`
	LimitsJSON
	Reason    string     `json:"reason,omitempty"`
	Status    string     `json:"status"`
	GrantID   string     `json:"grant_id,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	DecidedAt *time.Time `json:"decided_at,omitempty"`
	ExpiresAt time.Time  `json:"expires_at"`
	Interval  int        `json:"interval"` // seconds between polls
}

func requestJSON(r delegation.GrantRequest, now time.Time) GrantRequestJSON {
	status := string(r.Status)
	if r.Status == delegation.RequestPending && !now.Before(r.ExpiresAt) {
		status = "expired"
	}
	return GrantRequestJSON{RequestID: r.ID, AgentID: r.AgentID, OwnerID: r.OwnerID, Scopes: r.Scopes, Resources: r.Resources,
		AuthorizationDetails: r.AuthorizationDetails, LimitsJSON: limitsJSON(r.Limits), Reason: r.Reason, Status: status,
		GrantID: r.GrantID, CreatedAt: r.CreatedAt.UTC(), DecidedAt: timePtr(r.DecidedAt), ExpiresAt: r.ExpiresAt.UTC(),
		Interval: int(delegation.PollInterval.Seconds())}
}

func (a *API) createGrant(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req SpecJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Agent == "" {
		return apperr.New(apperr.Invalid, "agent", "agent is required: an agent id or @handle")
	}
	g, err := a.cfg.Delegation.CreateGrant(r.Context(), requestID(r.Context()), u, req.Agent, req.spec())
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, grantJSON(g, a.cfg.Now()))
	return nil
}

func (a *API) listGrants(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Delegation.ListGrants(r.Context(), u, r.URL.Query().Get("agent"))
	if err != nil {
		return err
	}
	out := make([]GrantJSON, 0, len(list))
	for _, g := range list {
		out = append(out, grantJSON(g, a.cfg.Now()))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"grants": out})
	return nil
}

func (a *API) getGrant(w http.ResponseWriter, r *http.Request, u principal.User) error {
	g, err := a.cfg.Delegation.GetGrant(r.Context(), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, grantJSON(g, a.cfg.Now()))
	return nil
}

func (a *API) revokeGrant(w http.ResponseWriter, r *http.Request, u principal.User) error {
	g, err := a.cfg.Delegation.RevokeGrant(r.Context(), requestID(r.Context()), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, grantJSON(g, a.cfg.Now()))
	return nil
}

func (a *API) listGrantRequests(w http.ResponseWriter, r *http.Request, u principal.User) error {
	status := delegation.RequestStatus(r.URL.Query().Get("status"))
	switch status {
	case "", delegation.RequestPending, delegation.RequestApproved, delegation.RequestDenied:
	default:
		return apperr.New(apperr.Invalid, "status", "status %q: want pending, approved or denied", apperr.Clip(string(status), 20))
	}
	list, err := a.cfg.Delegation.ListRequests(r.Context(), u, status)
	if err != nil {
		return err
	}
	out := make([]GrantRequestJSON, 0, len(list))
	for _, x := range list {
		out = append(out, requestJSON(x, a.cfg.Now()))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"requests": out})
	return nil
}

func (a *API) approveGrantRequest(w http.ResponseWriter, r *http.Request, u principal.User) error {
	var req *SpecJSON
	if r.ContentLength != 0 {
		req = &SpecJSON{}
		if err := decodeJSON(w, r, req); err != nil {
			return err
		}
	}
	var narrow *delegation.Spec
	if req != nil {
		sp := req.spec()
		narrow = &sp
	}
	g, err := a.cfg.Delegation.ApproveRequest(r.Context(), requestID(r.Context()), u, r.PathValue("id"), narrow)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, grantJSON(g, a.cfg.Now()))
	return nil
}

func (a *API) denyGrantRequest(w http.ResponseWriter, r *http.Request, u principal.User) error {
	x, err := a.cfg.Delegation.DenyRequest(r.Context(), requestID(r.Context()), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, requestJSON(x, a.cfg.Now()))
	return nil
}

func (a *API) listTasks(w http.ResponseWriter, r *http.Request, u principal.User) error {
	list, err := a.cfg.Delegation.ListTasks(r.Context(), u, r.URL.Query().Get("grant"))
	if err != nil {
		return err
	}
	out := make([]TaskJSON, 0, len(list))
	for _, t := range list {
		out = append(out, taskJSON(t, a.cfg.Now()))
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"tasks": out})
	return nil
}

func (a *API) getTask(w http.ResponseWriter, r *http.Request, u principal.User) error {
	t, err := a.cfg.Delegation.GetTask(r.Context(), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, taskJSON(t, a.cfg.Now()))
	return nil
}

func (a *API) endTask(revoke bool) userHandler {
	return func(w http.ResponseWriter, r *http.Request, u principal.User) error {
		t, err := a.cfg.Delegation.EndTask(r.Context(), requestID(r.Context()), u, r.PathValue("id"), revoke)
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, taskJSON(t, a.cfg.Now()))
		return nil
	}
}

// agentOf is the calling agent of an agent-authenticated route. These routes act for the agent
// as a whole (its grants, its tasks), so they take the agent's own token: a task token — on an
// instance key meant to be worth one task, or handed to another agent — is refused.
func agentOf(r *http.Request) (string, error) {
	c, ok := verify.CallerFrom(r.Context())
	if !ok {
		return "", apperr.New(apperr.Internal, "internal", "no caller in context")
	}
	if c.Task != "" || c.Principal != "" {
		return "", apperr.New(apperr.Forbidden, "task_token", "this route needs the agent's own token (client_credentials), not a task token")
	}
	return c.AgentID, nil
}

func (a *API) agentGrants(w http.ResponseWriter, r *http.Request) error {
	agentID, err := agentOf(r)
	if err != nil {
		return err
	}
	grants, toks, err := a.cfg.Delegation.GrantTokens(r.Context(), agentID)
	if err != nil {
		return err
	}
	out := make([]GrantJSON, 0, len(grants))
	for i, g := range grants {
		j := grantJSON(g, a.cfg.Now())
		j.GrantToken = toks[i]
		out = append(out, j)
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"grants": out})
	return nil
}

func (a *API) agentRequestGrant(w http.ResponseWriter, r *http.Request) error {
	agentID, err := agentOf(r)
	if err != nil {
		return err
	}
	var req SpecJSON
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	x, err := a.cfg.Delegation.RequestGrant(r.Context(), requestID(r.Context()), agentID, req.spec(), req.Reason)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusCreated, requestJSON(x, a.cfg.Now()))
	return nil
}

// agentPollGrantRequest answers like an RFC 8628 token poll: 400 authorization_pending or
// slow_down while pending, access_denied or expired_token when it ended without a grant.
func (a *API) agentPollGrantRequest(w http.ResponseWriter, r *http.Request) error {
	agentID, err := agentOf(r)
	if err != nil {
		return err
	}
	g, tok, err := a.cfg.Delegation.PollRequest(r.Context(), agentID, r.PathValue("id"))
	for _, poll := range []error{delegation.ErrPending, delegation.ErrSlowDown, delegation.ErrDenied, delegation.ErrExpired} {
		if errors.Is(err, poll) {
			de, _ := apperr.As(poll)
			return &httpapi.Error{Status: http.StatusBadRequest, Code: de.Reason, Reason: de.Reason, Description: de.Msg}
		}
	}
	if err != nil {
		return err
	}
	j := grantJSON(g, a.cfg.Now())
	j.GrantToken = tok
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, j)
	return nil
}

func (a *API) agentEndTask(w http.ResponseWriter, r *http.Request) error {
	agentID, err := agentOf(r)
	if err != nil {
		return err
	}
	t, err := a.cfg.Delegation.EndTaskAsAgent(r.Context(), requestID(r.Context()), agentID, r.PathValue("id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, taskJSON(t, a.cfg.Now()))
	return nil
}
