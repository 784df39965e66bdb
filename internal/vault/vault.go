package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/principal"
)

// Audit actions of the vault.
const (
	ActionUpstreamCreate = "upstream.create"
	ActionUpstreamUpdate = "upstream.update"
	ActionUpstreamDelete = "upstream.delete"
	ActionSecretSet      = "upstream.secret_set"
	ActionTokenRefresh   = "upstream.token_refresh"
)

// Cache lifetimes. Another replica's change is seen within these.
const (
	upstreamTTL = 5 * time.Second
	secretTTL   = 5 * time.Second
	// tokenMargin: an upstream access token is renewed this long before it expires.
	tokenMargin = 30 * time.Second
	// MaxSecretSize bounds a secret (a PEM client certificate key fits; a body does not).
	MaxSecretSize = 16 << 10
)

// Config wires the Service.
type Config struct {
	Store Store
	// Keyring is the master keyring (masterkey.Keyring) that wraps the data keys of secrets.
	Keyring MasterKeys
	Audit   audit.Store // denials and failed upstream token refreshes
	// Leases make one replica at a time refresh an OAuth upstream's access token while the
	// others wait for the token it stores. nil = each replica refreshes for itself.
	Leases Leases
	// HTTPClient calls upstream OAuth token endpoints; redirects are never followed. nil = a
	// client with a 15 s timeout.
	HTTPClient *http.Client
	Log        *slog.Logger // nil = discard
	Now        func() time.Time
}

// Service manages upstreams and their write-only secrets, and injects credentials into
// proxied requests.
type Service struct {
	cfg    Config
	hc     *http.Client
	env    *Envelopes
	holder string // this service's name in refresh leases: random

	mu        sync.Mutex
	upstreams map[string]cachedUpstream
	secrets   map[secretKey]cachedSecret // static credentials, opened
	tokens    map[string]*tokenState     // OAuth access tokens per upstream
}

type cachedUpstream struct {
	u   Upstream
	err error // ErrNotFound, cached as briefly
	at  time.Time
}

type secretKey struct{ upstream, kind string }

type cachedSecret struct {
	s  Secret
	at time.Time
}

// New returns the vault service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	hc := &http.Client{Timeout: 15 * time.Second}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		hc = &c
	}
	// A redirect would carry the client secret or refresh token in the form to another URL.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	holder := make([]byte, 12)
	rand.Read(holder)
	return &Service{cfg: cfg, hc: hc, env: NewEnvelopes(cfg.Keyring), holder: hex.EncodeToString(holder), upstreams: map[string]cachedUpstream{},
		secrets: map[secretKey]cachedSecret{}, tokens: map[string]*tokenState{}}
}

// adminOnly refuses (and records) a change by a non-admin.
func (s *Service) adminOnly(ctx context.Context, requestID string, by principal.User, action, target string) error {
	if by.Admin {
		return nil
	}
	ev := s.event(requestID, by, action, target)
	ev.Reason = "forbidden"
	ev.Detail = "only an admin can manage upstreams"
	if s.cfg.Audit != nil {
		if err := s.cfg.Audit.AppendEvent(context.WithoutCancel(ctx), ev); err != nil {
			s.cfg.Log.ErrorContext(ctx, "record upstream denial", slog.String("error", err.Error()))
		}
	}
	return apperr.New(apperr.Forbidden, "forbidden", "only an admin can manage upstreams")
}

func (s *Service) event(requestID string, by principal.User, action, target string) audit.Event {
	ev := audit.New(s.cfg.Now(), requestID, action)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, target
	return ev
}

func notFound(name string) error {
	return apperr.New(apperr.NotFound, "not_found", "no upstream %q: see mandate upstream list", apperr.Clip(name, 60))
}

// AddUpstream validates and stores a new upstream (admin only). Its secrets are set after with
// SetSecret.
func (s *Service) AddUpstream(ctx context.Context, requestID string, by principal.User, u Upstream) (Upstream, error) {
	if err := s.adminOnly(ctx, requestID, by, ActionUpstreamCreate, u.Name); err != nil {
		return Upstream{}, err
	}
	u, err := normalize(u)
	if err != nil {
		return Upstream{}, err
	}
	now := s.cfg.Now().UTC()
	u.CreatedAt, u.UpdatedAt, u.Secrets = now, now, nil
	ev := s.event(requestID, by, ActionUpstreamCreate, u.Name)
	ev.Detail = fmt.Sprintf("base_url=%s auth=%s routes=%d", u.BaseURL, u.Auth, len(u.Routes))
	if u.IdentityAssertion {
		ev.Detail += " identity_assertion=true"
	}
	err = s.cfg.Store.CreateUpstream(ctx, u, ev)
	if errors.Is(err, ErrExists) {
		return Upstream{}, apperr.Wrap(err, apperr.Conflict, "exists", "upstream %q exists: change its routes with mandate upstream update, or remove it first", u.Name)
	}
	if err != nil {
		return Upstream{}, fmt.Errorf("add upstream %s: %w", u.Name, err)
	}
	s.forget(u.Name)
	return u, nil
}

// UpdateRoutes replaces an upstream's routes (admin only).
func (s *Service) UpdateRoutes(ctx context.Context, requestID string, by principal.User, name string, routes []Route) (Upstream, error) {
	if err := s.adminOnly(ctx, requestID, by, ActionUpstreamUpdate, name); err != nil {
		return Upstream{}, err
	}
	routes, err := normalizeRoutes(routes)
	if err != nil {
		return Upstream{}, err
	}
	ev := s.event(requestID, by, ActionUpstreamUpdate, name)
	ev.Detail = fmt.Sprintf("routes=%d", len(routes))
	now := s.cfg.Now().UTC()
	u, err := s.cfg.Store.UpdateUpstream(ctx, name, func(u *Upstream) error {
		u.Routes, u.UpdatedAt = routes, now
		return nil
	}, ev)
	if errors.Is(err, ErrNotFound) {
		return Upstream{}, notFound(name)
	}
	if err != nil {
		return Upstream{}, fmt.Errorf("update upstream %s: %w", name, err)
	}
	s.forget(name)
	return u, nil
}

// RemoveUpstream deletes an upstream and every secret of it (admin only).
func (s *Service) RemoveUpstream(ctx context.Context, requestID string, by principal.User, name string) error {
	if err := s.adminOnly(ctx, requestID, by, ActionUpstreamDelete, name); err != nil {
		return err
	}
	err := s.cfg.Store.DeleteUpstream(ctx, name, s.event(requestID, by, ActionUpstreamDelete, name))
	if errors.Is(err, ErrNotFound) {
		return notFound(name)
	}
	if err != nil {
		return fmt.Errorf("remove upstream %s: %w", name, err)
	}
	s.forget(name)
	return nil
}

// ListUpstreams lists every upstream (without secrets, which nothing returns). Any
// authenticated user may read them: they say which APIs exist and what each scope allows.
func (s *Service) ListUpstreams(ctx context.Context) ([]Upstream, error) {
	return s.cfg.Store.ListUpstreams(ctx)
}

// GetUpstream reads an upstream from the store (not the cache).
func (s *Service) GetUpstream(ctx context.Context, name string) (Upstream, error) {
	u, err := s.cfg.Store.GetUpstream(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return Upstream{}, notFound(name)
	}
	return u, err
}

// Upstream returns an upstream for the proxy, cached for a few seconds. An unknown one is an
// apperr NotFound.
func (s *Service) Upstream(ctx context.Context, name string) (Upstream, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	c, ok := s.upstreams[name]
	s.mu.Unlock()
	if ok && now.Sub(c.at) < upstreamTTL && now.Sub(c.at) >= 0 {
		return c.u, c.err
	}
	if ValidName(name) != nil {
		return Upstream{}, notFound(name)
	}
	u, err := s.cfg.Store.GetUpstream(ctx, name)
	if errors.Is(err, ErrNotFound) {
		err = notFound(name)
	} else if err != nil {
		return Upstream{}, fmt.Errorf("get upstream %s: %w", name, err)
	}
	s.mu.Lock()
	if len(s.upstreams) > 10000 {
		clear(s.upstreams)
	}
	s.upstreams[name] = cachedUpstream{u: u, err: err, at: now}
	s.mu.Unlock()
	return u, err
}

// forget drops what this process cached about an upstream.
func (s *Service) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.upstreams, name)
	for k, c := range s.secrets {
		if k.upstream == name {
			c.s.Clear()
			delete(s.secrets, k)
		}
	}
	delete(s.tokens, name)
}

// SetSecret stores a secret of an upstream, sealed (admin only). Secrets are write-only:
// nothing ever returns one. kind "" is the upstream's main secret (see SecretKinds). Setting an
// OAuth upstream's refresh token or client secret drops its cached access token.
func (s *Service) SetSecret(ctx context.Context, requestID string, by principal.User, upstream, kind string, secret []byte) error {
	if err := s.adminOnly(ctx, requestID, by, ActionSecretSet, upstream); err != nil {
		return err
	}
	u, err := s.GetUpstream(ctx, upstream)
	if err != nil {
		return err
	}
	kinds := SecretKinds(u.Auth)
	if kind == "" {
		kind = kinds[0]
	}
	if !slices.Contains(kinds, kind) {
		return invalid("kind", "upstream %s (auth %s) takes secrets of kind %v, not %q", u.Name, u.Auth, kinds, apperr.Clip(kind, 40))
	}
	if err := checkSecret(u.Auth, kind, secret); err != nil {
		return err
	}
	sealed, err := s.env.Seal(u.Name, kind, secret)
	if err != nil {
		return fmt.Errorf("seal secret of %s: %w", u.Name, err)
	}
	ev := s.event(requestID, by, ActionSecretSet, u.Name)
	ev.Detail = "kind=" + kind
	now := s.cfg.Now().UTC()
	switch u.Auth {
	case AuthOAuth2Refresh, AuthOAuth2ClientCredentials:
		// The access token came from the old secret: expire it in the same write, so that no
		// replica keeps using a token of a grant that was replaced.
		_, _, version, err := s.cfg.Store.GetSecret(ctx, u.Name, kind)
		if errors.Is(err, ErrNotFound) {
			version, err = 0, nil
		}
		if err != nil {
			return fmt.Errorf("set secret of %s: %w", u.Name, err)
		}
		tomb, err := s.env.Seal(u.Name, SecretAccessToken, nil)
		if err != nil {
			return fmt.Errorf("seal secret of %s: %w", u.Name, err)
		}
		err = s.cfg.Store.SwapSecrets(ctx, u.Name, kind, version, map[string]SealedSecret{
			kind:              {Sealed: sealed},
			SecretAccessToken: {Sealed: tomb, ExpiresAt: now},
		}, ev)
		if errors.Is(err, ErrConflict) {
			return apperr.Wrap(err, apperr.Conflict, "conflict", "the %s of %s changed while it was being set: try again", kind, u.Name)
		}
		if err != nil {
			return fmt.Errorf("set secret of %s: %w", u.Name, err)
		}
	default:
		if err := s.cfg.Store.PutSecret(ctx, u.Name, kind, sealed, time.Time{}, ev); err != nil {
			if errors.Is(err, ErrNotFound) {
				return notFound(u.Name)
			}
			return fmt.Errorf("set secret of %s: %w", u.Name, err)
		}
	}
	s.forget(u.Name)
	return nil
}

// checkSecret refuses a secret that cannot work, without ever quoting it.
func checkSecret(auth AuthKind, kind string, secret []byte) error {
	switch {
	case len(secret) == 0:
		return invalid("secret", "the secret is empty")
	case len(secret) > MaxSecretSize:
		return invalid("secret", "the secret is longer than %d bytes", MaxSecretSize)
	}
	for _, c := range secret {
		if c < 0x20 || c == 0x7f {
			return invalid("secret", "the secret holds a control character or a line break (it goes into an HTTP header or form): strip the trailing newline")
		}
	}
	if auth == AuthBasic && kind == SecretCredential && !containsByte(secret, ':') {
		return invalid("secret", "a basic credential is user:password")
	}
	return nil
}

func containsByte(b []byte, c byte) bool {
	return slices.Contains(b, c)
}
