// Package federation trusts external identity providers — CI systems, Kubernetes clusters,
// SPIFFE/SPIRE, cloud IdPs — so a workload trades the short-lived OIDC token its platform gives
// it for a mandate token of a service account (RFC 7523 jwt-bearer), with no static secret.
//
// An Issuer is a trusted token issuer and where its keys come from (OIDC discovery, or a pinned
// JWKS such as a SPIFFE trust bundle). A Rule maps assertions from one issuer, for one
// audience, that meet its conditions (subject prefix, exact claims, a CEL condition) to a
// service account, the scopes it may have and the lifetime of its tokens.
package federation

import (
	"context"
	"errors"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
)

// Audit actions.
const (
	ActionIssuerAdd    = "federation.issuer.add"
	ActionIssuerRemove = "federation.issuer.remove"
	ActionRuleAdd      = "federation.rule.add"
	ActionRuleDisable  = "federation.rule.disable"
	ActionRuleEnable   = "federation.rule.enable"
)

// Defaults and bounds.
const (
	DefaultMaxAssertionLifetime = time.Hour
	DefaultTokenTTL             = 10 * time.Minute
	MaxTokenTTL                 = time.Hour // the hard cap of a federated token's lifetime
)

// Issuer is a trusted external token issuer.
type Issuer struct {
	URL string // the exact iss claim; https, or http on a loopback address (tests)
	// JWKS is a pinned key set (a JWKS file or a SPIFFE trust bundle in JWKS form); nil = OIDC
	// discovery at URL + /.well-known/openid-configuration.
	JWKS                 []byte
	MaxAssertionLifetime time.Duration // exp - iat (or exp - nbf) may not exceed it
	RequireJTI           bool          // assertions must carry a jti, used once
	// Shared marks a multi-tenant issuer (GitHub Actions, GitLab.com, Buildkite, Google…): its
	// rules must pin the tenant. Known shared issuers are marked whatever the flag says.
	Shared    bool
	CreatedAt time.Time
}

// Rule maps assertions to a service account.
type Rule struct {
	ID            string // fr_…
	Issuer        string // Issuer.URL
	Audience      string // the assertion's aud must contain it
	SubjectPrefix string
	Claims        map[string]string // each claim must equal the value (strings, numbers, booleans)
	Condition     string            // CEL over the claims, bound to `claims` (and `assertion` as an alias)
	// ServiceAccount is the svc_… id the matched assertion acts as.
	ServiceAccount string
	Scopes         []string
	Resources      []string      // RFC 8707 resources its tokens (and grants) may name; none = the issuer's API only
	TokenTTL       time.Duration // 0 = DefaultTokenTTL
	RequireDPoP    bool
	Disabled       bool
	CreatedAt      time.Time
}

// Store errors.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// Store is what federation needs from storage.
type Store interface {
	CreateIssuer(ctx context.Context, is Issuer, ev audit.Event) error // ErrExists for a known URL
	GetIssuer(ctx context.Context, url string) (Issuer, error)
	ListIssuers(ctx context.Context) ([]Issuer, error)
	// RemoveIssuer deletes an issuer and its rules.
	RemoveIssuer(ctx context.Context, url string, ev audit.Event) error
	CreateRule(ctx context.Context, r Rule, ev audit.Event) error
	GetRule(ctx context.Context, id string) (Rule, error)
	// ListRules lists the rules of one issuer ("" = all), oldest first.
	ListRules(ctx context.Context, issuer string) ([]Rule, error)
	SetRuleDisabled(ctx context.Context, id string, disabled bool, ev audit.Event) error
}
