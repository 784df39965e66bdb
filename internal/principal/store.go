package principal

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// User is a person who owns agents and grants them authority.
type User struct {
	ID        string // usr_…
	Name      string // unique, e.g. "alice"
	Admin     bool
	CreatedAt time.Time
	// Grantable bounds what the user may delegate to agents; nil = no bound. Admins are never
	// bounded.
	Grantable *Grantable
}

// IsServiceAccount reports whether u is a service account acting through a federated token (its
// svc_… id; Grantable is what the token's rule lets it delegate) rather than a person.
func (u User) IsServiceAccount() bool { return IsServiceAccountID(u.ID) }

// ServiceAccountPrefix starts every service account id (ids.New gives "svc_…").
const ServiceAccountPrefix = "svc"

// IsServiceAccountID reports whether id names a service account.
func IsServiceAccountID(id string) bool { return strings.HasPrefix(id, ServiceAccountPrefix+"_") }

// Grantable is what a user may give in grants: scopes and resource URIs.
type Grantable struct {
	Scopes    []string `json:"scopes"`
	Resources []string `json:"resources"`
}

// APIToken is a user's credential for the management API and CLI. Only its hash is stored.
type APIToken struct {
	ID        string // tok_…
	UserID    string
	Name      string
	Hash      string // ids.Hash of the secret
	CreatedAt time.Time
	ExpiresAt time.Time // zero = no expiry
	RevokedAt time.Time // zero unless revoked
	// Bootstrap marks the token the server writes to <data-dir>/bootstrap-token on first start:
	// it only logs in (see Service.Login), once, within BootstrapTTL.
	Bootstrap bool
}

// Usable reports whether t works at now: not revoked, not expired.
func (t APIToken) Usable(now time.Time) bool {
	return t.RevokedAt.IsZero() && (t.ExpiresAt.IsZero() || now.Before(t.ExpiresAt))
}

// Store errors.
var (
	ErrNotFound  = errors.New("not found")
	ErrNameTaken = errors.New("name already taken")
)

// Store is what principals need from storage.
type Store interface {
	ServiceAccountStore
	CreateUser(ctx context.Context, u User, ev audit.Event) error
	GetUser(ctx context.Context, ref string) (User, error) // by id, or by name
	ListUsers(ctx context.Context) ([]User, error)
	CountUsers(ctx context.Context) (int, error)
	CreateAPIToken(ctx context.Context, t APIToken, ev audit.Event) error
	// LookupAPIToken finds an unrevoked token by hash and its user. Expiry is the caller's check.
	LookupAPIToken(ctx context.Context, hash string) (APIToken, User, error)
	ListAPITokens(ctx context.Context, userID string) ([]APIToken, error)
	RevokeAPIToken(ctx context.Context, id string, at time.Time, ev audit.Event) error
	// ExchangeBootstrapToken revokes the unrevoked bootstrap token id and stores next, in one
	// transaction; ErrNotFound when id is not an unrevoked bootstrap token (used meanwhile).
	ExchangeBootstrapToken(ctx context.Context, id string, at time.Time, next APIToken, revoked, created audit.Event) error
	// LookupBootstrapToken finds a bootstrap token by hash, revoked or not.
	LookupBootstrapToken(ctx context.Context, hash string) (APIToken, error)
}

// ServiceAccount is a non-human principal: a CI pipeline, a cluster workload. It usually acts
// through workload identity federation (internal/federation) and, like a user, owns agents and
// grants them authority.
type ServiceAccount struct {
	ID          string // svc_…
	Name        string // unique among service accounts, e.g. "ci-deploy"
	OwnerID     string // the user responsible for it
	Description string
	Disabled    bool // a disabled account gets no token and its tokens stop working
	CreatedAt   time.Time
}

// ServiceAccountStore is what service accounts need from storage.
type ServiceAccountStore interface {
	CreateServiceAccount(ctx context.Context, a ServiceAccount, ev audit.Event) error
	GetServiceAccount(ctx context.Context, ref string) (ServiceAccount, error) // by id, or by name
	ListServiceAccounts(ctx context.Context) ([]ServiceAccount, error)
	SetServiceAccountDisabled(ctx context.Context, id string, disabled bool, ev audit.Event) error
}
