// Package audit defines the events every decision writes. Events are written by the store in the
// same transaction as the change they describe, so an issued token or a revocation never exists
// without its record. The full audit tooling (queries, chain verification) builds on this.
package audit

import (
	"context"
	"time"
)

// Outcome is how a decision ended.
type Outcome string

// Outcomes. An event starts as OutcomeDenied and becomes OutcomeSuccess only once the operation
// commits, so a crash mid-way never leaves a success on record (fail closed).
const (
	OutcomeSuccess Outcome = "success"
	OutcomeDenied  Outcome = "denied"
	OutcomeFailure Outcome = "failure"
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
// identifiers (jti, hashes).
type Event struct {
	ID          string    // evt_…, set by New
	Time        time.Time // set by New
	RequestID   string
	Action      string
	Outcome     Outcome
	Reason      string // stable machine word: "replay", "agent_revoked", …
	Detail      string // one sentence for humans; never a secret
	ActorType   string
	ActorID     string // usr_… or agt_… that acted
	PrincipalID string // on whose behalf (the agent's owner for agent actions)
	AgentID     string
	Target      string // the id of the object acted on
	TokenID     string // jti of the token issued, refused or revoked
	Source      string // the client address of an anonymous denial (IPv4, or an IPv6 /64)

	// An aggregated event stands for Count identical anonymous denials (same Source, Action and
	// Reason) made from First to Last; see Aggregator. Count is 0 on every other event, which
	// stands for one.
	Count int64
	First time.Time
	Last  time.Time

	// Filled by the store when the event is appended to the hash chain.
	Seq      int64
	PrevHash string
	Hash     string
}

// Filter selects events for List.
type Filter struct {
	Action      string
	AgentID     string
	PrincipalID string
	RequestID   string // every event of one HTTP request (the X-Request-Id a refusal names)
	Outcome     Outcome
	Limit       int // 0 = 100
}

// Store appends standalone events (denials, which change nothing else) and lists them.
// Mutating stores of other packages take an Event and append it in their own transaction.
type Store interface {
	AppendEvent(ctx context.Context, ev Event) error
	ListEvents(ctx context.Context, f Filter) ([]Event, error)
}
