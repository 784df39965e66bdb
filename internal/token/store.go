package token

import (
	"context"
	"errors"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// SigningKey is one server signing key. Private is the private key wrapped with the master key;
// it is never stored or logged unwrapped.
type SigningKey struct {
	KID          string
	Alg          string // "EdDSA" or "ES256"
	PublicJWK    []byte // JSON
	Private      []byte // sealed with the master key
	CreatedAt    time.Time
	ActiveAt     time.Time // signs from this time on (publish, then sign)
	PublishUntil time.Time // zero while it may still sign; then the last token it signed has expired by this time
}

// RevokedToken is an access token revoked before its expiry (RFC 7009). Kept until Expires.
type RevokedToken struct {
	JTI       string
	AgentID   string
	ExpiresAt time.Time
	RevokedAt time.Time
}

// SingleUse is an identifier that may be used once (a client assertion's jti), remembered
// until ExpiresAt.
type SingleUse struct {
	ID        string
	ExpiresAt time.Time
}

// Revocation is one entry of the revocation log that verifiers follow: every revocation of an
// agent, grant, task (ended or revoked) or access token appends one, in the transaction of the
// change.
type Revocation struct {
	Seq       int64  // the cursor: strictly increasing
	Kind      string // KindAgent, KindGrant, KindTask or KindToken
	ID        string
	ExpiresAt time.Time // after this the entry no longer matters (what it revoked has expired); zero = never
	RevokedAt time.Time
}

// Revocation kinds.
const (
	KindAgent = "agent"
	KindGrant = "grant"
	KindTask  = "task"
	KindToken = "token"
	KindKey   = "key" // an agent key, by its RFC 7638 thumbprint
)

// ErrNotFound is returned for an unknown key or token.
var ErrNotFound = errors.New("not found")

// Store is what token minting, key rotation and revocation need from storage.
type Store interface {
	// AddSigningKey stores k and sets PublishUntil = retireUntil on every other key whose
	// PublishUntil is zero, with ev, in one transaction. The first key passes a zero retireUntil.
	AddSigningKey(ctx context.Context, k SigningKey, retireUntil time.Time, ev audit.Event) error
	// ListSigningKeys returns every key whose PublishUntil is zero or after now, newest first.
	ListSigningKeys(ctx context.Context, now time.Time) ([]SigningKey, error)
	// RecordIssue commits the issue of a token: it uses up every id in uses (dpop.ErrReplay,
	// wrapped, if one was used before and nothing is written) and appends ev as a success, in
	// one transaction, so a token never exists without its record and costs one disk sync.
	RecordIssue(ctx context.Context, uses []SingleUse, ev audit.Event) error
	RevokeToken(ctx context.Context, t RevokedToken, ev audit.Event) error
	IsTokenRevoked(ctx context.Context, jti string) (bool, error)
	// ListRevokedTokens returns revoked tokens not yet expired at now.
	ListRevokedTokens(ctx context.Context, now time.Time) ([]RevokedToken, error)
	// ListRevocations returns up to limit log entries with Seq > after, oldest first, leaving out
	// those expired at now.
	ListRevocations(ctx context.Context, after int64, now time.Time, limit int) ([]Revocation, error)
	// Purge deletes state that can no longer matter at now: expired revoked tokens, expired
	// used jtis, keys past PublishUntil. It returns how many rows went.
	Purge(ctx context.Context, now time.Time) (int64, error)
}
