package registry

import (
	"context"
	"errors"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Status is an agent's place in its life cycle. REVOKED is final.
type Status string

// Agent statuses.
const (
	StatusUnclaimed Status = "UNCLAIMED"
	StatusClaimed   Status = "CLAIMED"
	StatusRevoked   Status = "REVOKED"
)

// Agent is a registered non-human actor. Its identity is its keys; its handle stays across
// key rotation.
type Agent struct {
	ID          string // agt_…
	Handle      string
	Name        string
	Description string
	Status      Status
	OwnerID     string // usr_… once claimed
	CreatedAt   time.Time
	ClaimedAt   time.Time // zero until claimed
	RevokedAt   time.Time // zero unless revoked
	Keys        []Key     // newest first
}

// Key is one did:key of an agent. A rotated-out key keeps working until ExpiresAt.
type Key struct {
	DID       string
	JKT       string // RFC 7638 thumbprint of the key
	CreatedAt time.Time
	ExpiresAt time.Time // zero = no expiry (the current key)
}

// ClaimCode is the hashed one-time code that lets a principal take ownership of an agent.
type ClaimCode struct {
	Hash      string // ids.Hash of the code
	ExpiresAt time.Time
}

// Filter selects agents for ListAgents. Empty fields match everything.
type Filter struct {
	OwnerID string
	Status  Status
}

// Store errors. Stores return these (possibly wrapped) so the edge can map them.
var (
	ErrNotFound    = errors.New("agent not found")
	ErrDIDTaken    = errors.New("did already registered")
	ErrHandleTaken = errors.New("handle already taken")
	ErrClaimCode   = errors.New("claim code is invalid, expired or already used")
	ErrConflict    = errors.New("agent changed concurrently")
)

// Store is what the registry needs from storage.
type Store interface {
	// CreateAgent stores a new UNCLAIMED agent with its first key and claim code, and ev.
	// A DID registered to any agent (current or rotated-out key) gives ErrDIDTaken; a used
	// handle gives ErrHandleTaken.
	CreateAgent(ctx context.Context, a Agent, code ClaimCode, ev audit.Event) error
	// GetAgent finds an agent by id, or by handle when ref starts with "@".
	GetAgent(ctx context.Context, ref string) (Agent, error)
	// GetAgentByDID finds the agent that has (or had) the key.
	GetAgentByDID(ctx context.Context, did string) (Agent, error)
	ListAgents(ctx context.Context, f Filter) ([]Agent, error)
	// ClaimAgent consumes an unexpired claim code (it can never be used again, success or not
	// is decided atomically), sets the owner and status CLAIMED, and appends ev.
	ClaimAgent(ctx context.Context, codeHash, ownerID string, now time.Time, ev audit.Event) (Agent, error)
	// UpdateAgent reads the agent, applies fn and writes the result with ev in one
	// transaction. Only Status, OwnerID, ClaimedAt, RevokedAt, Name and Description are
	// written; keys change through RotateKey. Becoming REVOKED ends, in the same transaction,
	// every active task of the agent and every task under them, each with its own event
	// (task.revoke, Cause: the agent id, Reason cascade_agent).
	UpdateAgent(ctx context.Context, id string, fn func(*Agent) error, ev audit.Event) (Agent, error)
	// RotateKey adds newKey as the agent's current key and sets ExpiresAt on every other key
	// that has none (or a later one) to oldExpires, with ev, in one transaction.
	RotateKey(ctx context.Context, agentID string, newKey Key, oldExpires time.Time, ev audit.Event) (Agent, error)
	// RevokeKey ends the agent's key with did at at (ExpiresAt = at) and appends a revocation
	// log entry for its thumbprint, with ev, in one transaction; the agent's active tasks given
	// to that key, and every task under them, end in the same transaction, each with its own
	// event (task.revoke, Cause: did, Reason cascade_key). ErrNotFound when the agent has no
	// such key.
	RevokeKey(ctx context.Context, agentID, did string, at time.Time, ev audit.Event) (Agent, error)
	// RenewClaimCode replaces the claim code of an UNCLAIMED agent with code (the old one never
	// works again) and appends ev, in one transaction. ErrNotFound when there is no such agent,
	// ErrConflict when it is not UNCLAIMED.
	RenewClaimCode(ctx context.Context, agentID string, code ClaimCode, ev audit.Event) error
	// PurgeUnclaimed deletes at most limit UNCLAIMED agents whose claim code expired at or before
	// lapsedBefore, with their keys (so their handles and keys can be registered again), and
	// appends the event ev returns for each, in one transaction. It never touches a CLAIMED or
	// REVOKED agent, nor one that anything else refers to. It returns the deleted agents.
	PurgeUnclaimed(ctx context.Context, lapsedBefore time.Time, limit int, ev func(Agent) audit.Event) ([]Agent, error)
}
