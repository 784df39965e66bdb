package token

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// IssuanceConfig wires the Issuance service.
type IssuanceConfig struct {
	Keys   *Keys
	Store  Store
	Issuer string
	TTL    time.Duration // the lifetime of an access token, unless a grant asks for less
	Now    func() time.Time
}

// Issuance makes access tokens and owns the record of their issue and revocation: the token
// endpoint mints through it and commits through it (or through delegation, for a token exchange
// that starts a task), so a token never exists without its audit event.
type Issuance struct{ cfg IssuanceConfig }

// NewIssuance returns the issuance service.
func NewIssuance(cfg IssuanceConfig) *Issuance {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Issuance{cfg: cfg}
}

// ErrAuthorityExpired is returned by Mint when notAfter has passed: the authority the token would
// rest on has expired.
var ErrAuthorityExpired = errors.New("the authority this token rests on has expired")

// Minted is a signed access token and its claims.
type Minted struct {
	Raw    string
	Claims AccessClaims
}

// Mint fills in the claims every access token has (issuer, times, id, key binding) and signs:
// this is where access tokens are made. The token lives ttl (0 = the configured lifetime), or
// until notAfter when that is earlier; it is bound to the key bind unless c names another (bind
// "" and no cnf in c: a Bearer token). ev is filled with what the token says (Describe).
func (s *Issuance) Mint(ctx context.Context, c AccessClaims, ttl time.Duration, notAfter time.Time, bind string, ev *audit.Event) (Minted, error) {
	if ttl == 0 {
		ttl = s.cfg.TTL
	}
	now := s.cfg.Now()
	exp := now.Add(ttl)
	if !notAfter.IsZero() && notAfter.Before(exp) {
		exp = notAfter
	}
	if !exp.After(now) {
		return Minted{}, ErrAuthorityExpired
	}
	c.Issuer = s.cfg.Issuer
	c.IssuedAt, c.NotBefore = now.Unix(), now.Unix()
	c.Expiry = exp.Unix()
	c.JTI = ids.New("at")
	if c.Cnf.JKT == "" {
		c.Cnf = Confirmation{JKT: bind}
	}
	raw, err := s.cfg.Keys.Sign(ctx, TypeAccessToken, c)
	if err != nil {
		return Minted{}, fmt.Errorf("sign access token: %w", err)
	}
	c.Describe(ev)
	return Minted{Raw: raw, Claims: c}, nil
}

// Record commits the issue of a token: the single-use ids it consumed (dpop.ErrReplay, wrapped,
// if one was used before) and its audit event, as a success, in one transaction.
func (s *Issuance) Record(ctx context.Context, uses []SingleUse, ev audit.Event) error {
	return s.cfg.Store.RecordIssue(ctx, uses, ev)
}

// Revoke revokes the access token c at now, with ev (filled with what c says) in the same
// transaction.
func (s *Issuance) Revoke(ctx context.Context, c *AccessClaims, ev audit.Event) error {
	c.Describe(&ev)
	err := s.cfg.Store.RevokeToken(ctx, RevokedToken{JTI: c.JTI, AgentID: c.ClientID, ExpiresAt: c.ExpiresAt(), RevokedAt: s.cfg.Now().UTC()}, ev)
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", c.JTI, err)
	}
	return nil
}
