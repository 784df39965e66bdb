// Package vault keeps upstream APIs and their credentials: envelope-encrypted, write-only
// secrets, and the credential injected into a proxied request (see Service.Inject). Nothing
// outside this package ever sees a secret in the clear.
package vault

import (
	"context"
	"errors"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// AuthKind is how an upstream expects its credential.
type AuthKind string

// Auth kinds.
const (
	AuthBearer                  AuthKind = "bearer"                    // Authorization: Bearer <secret>
	AuthHeader                  AuthKind = "header"                    // <Param>: <secret>
	AuthQuery                   AuthKind = "query"                     // ?<Param>=<secret>
	AuthBasic                   AuthKind = "basic"                     // secret is "user:password"
	AuthOAuth2Refresh           AuthKind = "oauth2-refresh"            // refresh token grant at TokenURL
	AuthOAuth2ClientCredentials AuthKind = "oauth2-client-credentials" // client credentials grant at TokenURL
)

// Secret kinds stored per upstream.
const (
	SecretCredential   = "credential"    // bearer/header/query/basic
	SecretClientSecret = "client_secret" // oauth2
	SecretRefreshToken = "refresh_token" // oauth2-refresh
	SecretAccessToken  = "access_token"  // oauth2 (cached, with expiry)
)

// Route maps a scope to what it allows on the upstream.
type Route struct {
	Scope   string     `json:"scope"`
	Methods []string   `json:"methods"` // e.g. ["GET"]; "*" = any
	Paths   []string   `json:"paths"`   // patterns: "/v3/site-explorer/*" (one segment), "/v3/**" (the rest)
	Body    []BodyRule `json:"body,omitempty"`
}

// BodyRule lets an authorization_details object of type <upstream name> constrain a JSON request
// body: the values at Pointer (RFC 6901) must match the detail's field Detail, per Match.
type BodyRule struct {
	Detail  string `json:"detail"`  // field name in the authorization_details object
	Pointer string `json:"pointer"` // where in the JSON body, e.g. "/to"
	Match   string `json:"match"`   // "equals" (value in the list), "email_domain", "prefix", "max" (number ≤)
}

// OAuth2 describes an OAuth upstream.
type OAuth2 struct {
	AuthURL  string   `json:"auth_url,omitempty"` // for mandate upstream connect
	TokenURL string   `json:"token_url"`
	ClientID string   `json:"client_id"`
	Scopes   []string `json:"scopes,omitempty"`
}

// Upstream is a third-party API reached only through the proxy.
type Upstream struct {
	Name         string // [a-z0-9-]{1,40}
	BaseURL      string // scheme://host[:port][/prefix]; the proxy dials only this host
	Auth         AuthKind
	Param        string // header or query parameter name for AuthHeader/AuthQuery
	OAuth2       *OAuth2
	AllowPrivate bool // the upstream is on a loopback/private address on purpose (tests, on-prem)
	// IdentityAssertion makes the proxy send the upstream a short-lived signed assertion of who
	// acts for whom (a Txn-Token header; docs/proxy.md).
	IdentityAssertion bool
	Routes            []Route
	CreatedAt         time.Time
	UpdatedAt         time.Time
	// Secrets are the kinds of secret stored for the upstream and not expired, sorted: set by
	// the store on reads, ignored on writes. Never their values.
	Secrets []string
}

// Errors.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrConflict = errors.New("changed concurrently")
)

// Store is what the vault needs from storage. Sealed values are opaque blobs (see envelope.go).
type Store interface {
	CreateUpstream(ctx context.Context, u Upstream, ev audit.Event) error
	UpdateUpstream(ctx context.Context, name string, fn func(*Upstream) error, ev audit.Event) (Upstream, error)
	GetUpstream(ctx context.Context, name string) (Upstream, error)
	ListUpstreams(ctx context.Context) ([]Upstream, error)
	DeleteUpstream(ctx context.Context, name string, ev audit.Event) error // and its secrets

	// PutSecret stores a sealed secret (replacing one of the same kind) with ev.
	PutSecret(ctx context.Context, upstream, kind string, sealed []byte, expiresAt time.Time, ev audit.Event) error
	// GetSecret returns the sealed secret and its version (bumped by every write).
	GetSecret(ctx context.Context, upstream, kind string) (sealed []byte, expiresAt time.Time, version int64, err error)
	// SwapSecrets writes several secrets at once only if the secret of kind checkKind still has
	// version checkVersion, 0 meaning there is none (ErrConflict otherwise, and nothing is
	// written): a rotated refresh token and its new access token land together, and two
	// replicas refreshing at once cannot both win. Versions only grow, also across a delete
	// and re-creation of the upstream. ErrNotFound if there is no such upstream.
	SwapSecrets(ctx context.Context, upstream, checkKind string, checkVersion int64, secrets map[string]SealedSecret, ev audit.Event) error
}

// Leases is what the vault needs to refresh an OAuth upstream's access token on one replica at a
// time (internal/sqlstore implements it, in the database every replica shares).
type Leases interface {
	// TakeRefreshLease takes the lease on refreshing upstream's access token for holder until
	// now+ttl, in one atomic step; false when another holder's lease has not expired.
	TakeRefreshLease(ctx context.Context, upstream, holder string, now time.Time, ttl time.Duration) (bool, error)
	// ReleaseRefreshLease gives holder's lease up.
	ReleaseRefreshLease(ctx context.Context, upstream, holder string) error
}

// SealedSecret is one value for SwapSecrets.
type SealedSecret struct {
	Sealed    []byte
	ExpiresAt time.Time
}
