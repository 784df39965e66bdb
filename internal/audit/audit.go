// Package audit defines the events every decision writes. Events are written by the store in the
// same transaction as the change they describe, so an issued token or a revocation never exists
// without its record. The full audit tooling (queries, chain verification) builds on this.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// ErrUnavailable is wrapped by every store error that means an audit record could not be made
// durable (the insert or its commit failed: a full disk, a lost database, a refused write). The
// operation it recorded did not happen: a store appends the record in the same transaction as
// the change, and callers act (issue, forward, answer success) only after it returns nil. The
// edge answers 503 audit_unavailable for it.
var ErrUnavailable = errors.New("the audit trail could not record this")

// Outcome is how a decision ended.
type Outcome string

// Outcomes. An event starts as OutcomeDenied and becomes OutcomeSuccess only once the operation
// commits, so a crash mid-way never leaves a success on record (fail closed).
const (
	OutcomeSuccess Outcome = "success"
	OutcomeDenied  Outcome = "denied"
	OutcomeFailure Outcome = "failure"
	// OutcomePending is the durable record written before an action whose outcome comes later
	// (a proxied call, recorded before it is forwarded). A later event with the same request id
	// and Cause = this event's id completes it; without one, the outcome is unknown (a crash).
	OutcomePending Outcome = "pending"
)

// Actions recorded by the core server.
const (
	ActionAgentRegister  = "agent.register"
	ActionAgentClaim     = "agent.claim"
	ActionAgentRevoke    = "agent.revoke"
	ActionAgentRotateKey = "agent.rotate_key"
	ActionAgentRevokeKey = "agent.revoke_key"
	ActionAgentClaimCode = "agent.claim_code" // a new claim code for an UNCLAIMED agent
	ActionAgentPurge     = "agent.purge"      // an UNCLAIMED agent removed after its claim code lapsed
	ActionTokenIssue     = "token.issue"
	ActionTokenDeny      = "token.deny"
	ActionTokenRevoke    = "token.revoke"
	ActionResourceDeny   = "resource.deny"
	ActionUserCreate     = "user.create"
	ActionAPITokenCreate = "api_token.create"
	// Service accounts.
	ActionServiceAccountCreate  = "service_account.create"
	ActionServiceAccountDisable = "service_account.disable"
	ActionServiceAccountEnable  = "service_account.enable"
	ActionAPITokenRevoke        = "api_token.revoke"
	ActionKeyRotate             = "signing_key.rotate"
)

// Actor types.
const (
	ActorUser      = "user"
	ActorAgent     = "agent"
	ActorService   = "service_account"
	ActorSystem    = "system"
	ActorAnonymous = "anonymous"
)

// Event is one decision. It never holds a token, proof, claim code or secret: only their
// identifiers (jti, thumbprints, hashes). Its JSON form is the one schema of the trail: the API,
// the CLI's --format json and every sink write it (docs/audit.md).
type Event struct {
	ID              string    `json:"id"`                          // evt_…, set by New
	Time            time.Time `json:"time"`                        // set by New
	RequestID       string    `json:"request_id"`                  // issued by the server: unique per HTTP request
	ClientRequestID string    `json:"client_request_id,omitempty"` // the X-Request-Id the client sent, if any
	Action          string    `json:"action"`
	Outcome         Outcome   `json:"outcome"`
	Reason          string    `json:"reason,omitempty"` // stable machine word: "replay", "agent_revoked", …
	Detail          string    `json:"detail,omitempty"` // one sentence for humans; never a secret
	ActorType       string    `json:"actor_type"`
	ActorID         string    `json:"actor_id,omitempty"`     // usr_…, svc_… or agt_… that acted
	ActorHandle     string    `json:"actor_handle,omitempty"` // the actor's handle (agents) or name (people)
	PrincipalID     string    `json:"principal_id,omitempty"` // on whose behalf (the agent's owner for agent actions)
	AgentID         string    `json:"agent_id,omitempty"`
	AgentDID        string    `json:"agent_did,omitempty"`    // the acting agent's did:key
	KeyJKT          string    `json:"key_jkt,omitempty"`      // thumbprint of the key that proved possession
	InstanceKey     string    `json:"instance_key,omitempty"` // thumbprint of the task's instance key, when the token is bound to one
	TaskID          string    `json:"task_id,omitempty"`
	ParentTaskID    string    `json:"parent_task_id,omitempty"`
	GrantID         string    `json:"grant_id,omitempty"`
	Chain           []Link    `json:"chain,omitempty"` // the delegation chain, first agent first, current agent last
	Scopes          []string  `json:"scopes,omitempty"`
	Resources       []string  `json:"resources,omitempty"`
	Target          string    `json:"target,omitempty"`   // the id of the object acted on
	TokenID         string    `json:"token_id,omitempty"` // jti of the token issued, refused or revoked
	Call            *Call     `json:"call,omitempty"`     // a proxied call
	Addr            string    `json:"addr,omitempty"`     // the caller's address
	UserAgent       string    `json:"user_agent,omitempty"`
	// Purpose and Terms make the trail reconstruct authority without the mutable tables: a task's
	// purpose, limits and budget on its start; a grant's terms on its creation (canonical JSON).
	Purpose string          `json:"purpose,omitempty"`
	Terms   json.RawMessage `json:"terms,omitempty"`
	// Cause is the id of what made this happen when it is not the request itself: the task,
	// grant, agent or key whose revocation cascaded to this one, or the pending event a proxy
	// call's completion completes.
	Cause  string `json:"cause,omitempty"`
	Source string `json:"source,omitempty"` // the client address of an anonymous denial (IPv4, or an IPv6 /64)

	// An aggregated event stands for Count identical anonymous denials (same Source, Action and
	// Reason) made from First to Last; see Aggregator. Count is 0 on every other event, which
	// stands for one.
	Count int64     `json:"count,omitempty"`
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`

	// Filled by the store when the event is appended to the hash chain.
	Seq      int64  `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// Link is one agent of a delegation chain.
type Link struct {
	AgentID     string `json:"agent_id"`
	Handle      string `json:"handle,omitempty"`
	DID         string `json:"did,omitempty"`
	InstanceKey string `json:"instance_key,omitempty"` // thumbprint of the instance key its token was bound to
	TaskID      string `json:"task_id,omitempty"`
}

// Call is what the egress proxy saw of one call. Query values are never kept: only names, each
// with a keyed hash of its value, so an investigator can tell two values apart (or match one
// they hold) and nobody can read a secret back from the trail.
type Call struct {
	Upstream   string       `json:"upstream"`
	Method     string       `json:"method"`
	Path       string       `json:"path"`
	Route      string       `json:"route,omitempty"` // the route pattern that matched
	Query      []QueryParam `json:"query,omitempty"`
	Status     int          `json:"status,omitempty"`
	BytesIn    int64        `json:"bytes_in,omitempty"`  // from the agent to the upstream
	BytesOut   int64        `json:"bytes_out,omitempty"` // from the upstream to the agent
	DurationUS int64        `json:"duration_us,omitempty"`
}

// QueryParam is one query parameter of a proxied call: its name, and a keyed hash of its value.
type QueryParam struct {
	Name      string `json:"name"`
	ValueHash string `json:"value_hash"`
}

// Filter selects events for List. Empty fields select everything.
type Filter struct {
	ID              string // one event (evt_…)
	Action          string
	AgentID         string
	PrincipalID     string
	RequestID       string // every event of one HTTP request (the X-Request-Id a refusal names)
	ClientRequestID string
	TaskID          string
	GrantID         string
	Upstream        string
	Target          string // the object acted on (a revocation's task, grant, agent or key)
	Outcome         Outcome
	Since, Until    time.Time // Since ≤ Time < Until
	// Paging by sequence number: Before (newest first, the default order) or After (oldest
	// first, as sinks and exports read) exclude the cursor itself.
	Before, After int64
	Ascending     bool
	Limit         int // 0 = 100
}

// Store appends standalone events (denials, which change nothing else) and lists them.
// Mutating stores of other packages take an Event and append it in their own transaction.
type Store interface {
	AppendEvent(ctx context.Context, ev Event) error
	ListEvents(ctx context.Context, f Filter) ([]Event, error)
}

// Origin is what the edge knows of the request an event records.
type Origin struct {
	RequestID       string
	ClientRequestID string
	Addr            string
	UserAgent       string
}

type originKey struct{}

// WithOrigin returns ctx carrying o. The HTTP middleware sets it on every request, so every
// event recorded while serving it names the request, whatever package records it.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originKey{}, o)
}

// OriginFrom returns the Origin in ctx, or the zero Origin.
func OriginFrom(ctx context.Context) Origin {
	o, _ := ctx.Value(originKey{}).(Origin)
	return o
}

// Stamp fills ev's empty request fields from the Origin in ctx. Stores call it as they append,
// so no caller can forget it.
func (ev *Event) Stamp(ctx context.Context) {
	o := OriginFrom(ctx)
	if ev.RequestID == "" {
		ev.RequestID = o.RequestID
	}
	if ev.ClientRequestID == "" && ev.RequestID == o.RequestID {
		ev.ClientRequestID = o.ClientRequestID
	}
	if ev.Addr == "" && ev.RequestID == o.RequestID {
		ev.Addr = o.Addr
	}
	if ev.UserAgent == "" && ev.RequestID == o.RequestID {
		ev.UserAgent = o.UserAgent
	}
}
