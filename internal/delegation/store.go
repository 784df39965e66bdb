package delegation

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
)

// GrantStatus is a grant's state. Revoked is final; an expired grant is active in the store but
// past ExpiresAt.
type GrantStatus string

// Grant statuses.
const (
	GrantActive  GrantStatus = "active"
	GrantRevoked GrantStatus = "revoked"
)

// Limits bound what tasks under a grant may do.
type Limits struct {
	MaxTaskTTL         time.Duration    // longest task
	MaxTokenTTL        time.Duration    // longest access token of a task
	MaxDepth           int              // agents in a chain, the grant's own agent counted as 1
	AllowSubdelegation bool             // may a task hand narrower authority to another agent
	Budget             map[string]int64 // calls across the grant, each task's calls, request size: see budget.go
}

// Grant is a standing delegation: PrincipalID lets AgentID act for them within Scopes, Resources
// and AuthorizationDetails, under Limits, until ExpiresAt.
type Grant struct {
	ID                   string // gr_…; also the grant token's jti
	PrincipalID          string // usr_… who granted
	AgentID              string // agt_… who may act
	Scopes               []string
	Resources            []string          // RFC 8707 resource URIs
	AuthorizationDetails []json.RawMessage // RFC 9396 objects, each with a "type"
	Limits               Limits
	Status               GrantStatus
	CreatedAt            time.Time
	ExpiresAt            time.Time
	RevokedAt            time.Time // zero unless revoked
	RequestID            string    // grq_… the grant answers, if any
	// BudgetUsed is what the grant's counters (calls, calls:<upstream>) have counted; only
	// Service.GetGrant fills it in.
	BudgetUsed map[string]int64
}

// RequestStatus is a grant request's state.
type RequestStatus string

// Grant request statuses.
const (
	RequestPending  RequestStatus = "pending"
	RequestApproved RequestStatus = "approved"
	RequestDenied   RequestStatus = "denied"
)

// GrantRequest is an agent's ask for a grant, pending until its owner answers.
type GrantRequest struct {
	ID                   string // grq_…
	AgentID              string
	OwnerID              string // who must answer: the agent's owner when it asked
	Scopes               []string
	Resources            []string
	AuthorizationDetails []json.RawMessage
	Limits               Limits // what the agent asked for; zero fields take the server defaults
	Reason               string
	Status               RequestStatus
	GrantID              string // set when approved
	CreatedAt            time.Time
	DecidedAt            time.Time
	ExpiresAt            time.Time // a pending request lapses (reads as denied) after this
	LastPolledAt         time.Time // for slow_down
}

// TaskStatus is a task's state. Only active tasks' tokens work.
type TaskStatus string

// Task statuses. An active task past ExpiresAt is expired.
const (
	TaskActive    TaskStatus = "active"
	TaskCompleted TaskStatus = "completed"
	TaskRevoked   TaskStatus = "revoked"
)

// Task is one execution under a grant (Depth 1) or under a parent task (sub-delegation).
type Task struct {
	ID                   string // tsk_…
	GrantID              string
	ParentID             string // "" for a task started from the grant token
	RootID               string // the depth-1 task of the chain (itself at depth 1)
	Depth                int    // agents in the chain up to and including AgentID
	PrincipalID          string
	AgentID              string // who holds the task's tokens
	InstanceJKT          string // thumbprint of the ephemeral instance key, if bound to one
	KeyJKT               string // the agent key that received the task (the grant token's at start, the actor's on delegation): revoking it ends the task
	Purpose              string
	Scopes               []string
	Resources            []string
	AuthorizationDetails []json.RawMessage
	Budget               map[string]int64
	Status               TaskStatus
	CreatedAt            time.Time
	ExpiresAt            time.Time
	EndedAt              time.Time // completed or revoked
}

// Store errors.
var (
	ErrNotFound  = errors.New("not found")
	ErrNotActive = errors.New("not active") // revoking or ending what is already ended
	// ErrBudgetExhausted: UseBudgets counted nothing, a budget is spent.
	ErrBudgetExhausted = errors.New("budget exhausted")
)

// Store is what delegation needs from storage.
type Store interface {
	// CreateGrant stores g and ev in one transaction. When g.RequestID is set, the request is
	// marked approved with GrantID = g.ID in the same transaction (ErrNotActive if it is no
	// longer pending).
	CreateGrant(ctx context.Context, g Grant, ev audit.Event) error
	GetGrant(ctx context.Context, id string) (Grant, error)
	// ListGrants filters by principal and agent ("" = any).
	ListGrants(ctx context.Context, principalID, agentID string) ([]Grant, error)
	// RevokeGrant marks the grant revoked, revokes every active task under it, appends a
	// revocation log entry for the grant and each task (with their expiry), ev, and for each
	// task revoked its own event (CascadeEvent: Cause the grant, Reason cascade_grant).
	RevokeGrant(ctx context.Context, id string, at time.Time, ev audit.Event) (Grant, error)

	CreateGrantRequest(ctx context.Context, r GrantRequest, ev audit.Event) error
	GetGrantRequest(ctx context.Context, id string) (GrantRequest, error)
	// ListGrantRequests filters by owner and status ("" = any).
	ListGrantRequests(ctx context.Context, ownerID string, status RequestStatus) ([]GrantRequest, error)
	// DenyGrantRequest marks a pending request denied (ErrNotActive otherwise), with ev.
	DenyGrantRequest(ctx context.Context, id string, at time.Time, ev audit.Event) (GrantRequest, error)
	// TouchGrantRequest sets LastPolledAt and returns the request as it was before.
	TouchGrantRequest(ctx context.Context, id string, at time.Time) (GrantRequest, error)

	// CreateTask stores t, uses up the single-use ids (dpop.ErrReplay, wrapped, if one was used
	// before; then nothing is written) and appends evs as successes, in order, in one
	// transaction (a token exchange passes the task.start event, then token.exchange). It
	// returns ErrNotActive when the grant is revoked or the parent task has ended by then, so a
	// revocation racing an exchange always wins.
	CreateTask(ctx context.Context, t Task, uses []token.SingleUse, evs ...audit.Event) error
	GetTask(ctx context.Context, id string) (Task, error)
	// ListTasks filters by principal, agent and grant ("" = any), newest first.
	ListTasks(ctx context.Context, principalID, agentID, grantID string) ([]Task, error)
	// EndTask sets the task and every active descendant (ParentID chain) to status (completed or
	// revoked) at at, appends a revocation log entry per task, ev, and for each descendant its
	// own event (CascadeEvent: Cause the task and Reason cascade_task, or ev.Cause and ev.Reason
	// when ev has a cause). ErrNotActive if the task is not active.
	EndTask(ctx context.Context, id string, status TaskStatus, at time.Time, ev audit.Event) (Task, error)
	// UseBudgets counts one unit against every counter, all or nothing, in one transaction:
	// when one is at its Max it returns a *BudgetExhaustedError naming it and counts nothing.
	// Atomic across concurrent calls and replicas: of 50 concurrent calls against a Max of 10,
	// exactly 10 succeed. A counter of an unknown grant or task gives ErrNotFound.
	UseBudgets(ctx context.Context, counters []BudgetCounter) error
	// GrantBudgetUsed returns what the grant's counters (calls, calls:<upstream>) have counted.
	GrantBudgetUsed(ctx context.Context, grantID string) (map[string]int64, error)
}
