// Package principal keeps the people agents act for: users, their API tokens (stored as
// SHA-256, shown once), and the bootstrap admin created on first start.
package principal

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// TokenPrefix starts every API token, so scanners can find leaked ones.
const TokenPrefix = "mnd"

// BootstrapUser is the name of the admin created on first start.
const BootstrapUser = "admin"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// BootstrapTTL is how long the bootstrap token works when nobody logs in with it.
const BootstrapTTL = 24 * time.Hour

// Service manages principals.
type Service struct {
	store Store
	now   func() time.Time
	spent func(context.Context) // called when the bootstrap token is seen used or expired
}

// New returns the principal service.
func New(store Store, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, now: now}
}

// OnBootstrapSpent sets f to be called whenever the bootstrap token is found used or expired (at
// its exchange, and when it is presented again), so whoever keeps its file can remove it.
func (s *Service) OnBootstrapSpent(f func(context.Context)) { s.spent = f }

// Bootstrap creates the admin user and its bootstrap token when there are no users yet. save
// is given the token secret before anything is stored, so a token is never committed that
// nobody can read; if storing fails, undo is called. The bootstrap token only logs in (Login),
// once, within BootstrapTTL: it is a way to the first named token, never an admin credential
// itself. Once there is a user, Bootstrap does nothing: a restart never makes another.
func (s *Service) Bootstrap(ctx context.Context, save func(secret string) (undo func(), err error)) (created bool, err error) {
	n, err := s.store.CountUsers(ctx)
	if err != nil {
		return false, fmt.Errorf("count users: %w", err)
	}
	if n > 0 {
		return false, nil
	}
	secret := ids.Secret(TokenPrefix)
	undo, err := save(secret)
	if err != nil {
		return false, err
	}
	admin := User{ID: ids.New("usr"), Name: BootstrapUser, Admin: true, CreatedAt: s.now().UTC()}
	ev := audit.New(s.now(), "", audit.ActionUserCreate)
	ev.ActorType, ev.Target, ev.Detail = audit.ActorSystem, admin.ID, "bootstrap admin"
	if err := s.store.CreateUser(ctx, admin, ev); err != nil {
		undo()
		return false, fmt.Errorf("create bootstrap admin: %w", err)
	}
	tok := APIToken{ID: ids.New("tok"), UserID: admin.ID, Name: "bootstrap", Hash: ids.Hash(secret), CreatedAt: admin.CreatedAt,
		ExpiresAt: admin.CreatedAt.Add(BootstrapTTL), Bootstrap: true}
	ev = audit.New(s.now(), "", audit.ActionAPITokenCreate)
	ev.ActorType, ev.PrincipalID, ev.Target = audit.ActorSystem, admin.ID, tok.ID
	if err := s.store.CreateAPIToken(ctx, tok, ev); err != nil {
		undo()
		return false, fmt.Errorf("create bootstrap token: %w", err)
	}
	return true, nil
}

// Authenticate returns the user of an API token. Every failure gives the same answer, but for
// the bootstrap token, whose holder is told to log in with it (or that it is spent).
func (s *Service) Authenticate(ctx context.Context, secret string) (User, error) {
	t, u, err := s.lookup(ctx, secret)
	if err != nil {
		return User{}, err
	}
	if t.Bootstrap {
		return User{}, apperr.New(apperr.Unauthenticated, "bootstrap_only",
			"this is the one-time bootstrap token: it only logs in; run mandate login --server URL --token-file <data-dir>/bootstrap-token")
	}
	return u, nil
}

// Login checks secret for mandate login. An API token is returned as it is (next is nil). The
// bootstrap token is exchanged: a new API token named name is made for the admin and the
// bootstrap token revoked, in one transaction, and the new token and its secret are returned.
func (s *Service) Login(ctx context.Context, requestID, secret, name string) (u User, next *APIToken, nextSecret string, err error) {
	t, u, err := s.lookup(ctx, secret)
	if err != nil || !t.Bootstrap {
		return u, nil, "", err
	}
	if name == "" {
		name = "login " + s.now().UTC().Format(time.DateOnly)
	}
	nextSecret = ids.Secret(TokenPrefix)
	now := s.now().UTC()
	nt := APIToken{ID: ids.New("tok"), UserID: u.ID, Name: apperr.Clip(name, 100), Hash: ids.Hash(nextSecret), CreatedAt: now}
	revoked := audit.New(now, requestID, audit.ActionAPITokenRevoke)
	revoked.ActorType, revoked.ActorID, revoked.PrincipalID, revoked.Target = audit.ActorUser, u.ID, u.ID, t.ID
	revoked.Detail = "bootstrap token used by mandate login"
	created := audit.New(now, requestID, audit.ActionAPITokenCreate)
	created.ActorType, created.ActorID, created.PrincipalID, created.Target = audit.ActorUser, u.ID, u.ID, nt.ID
	created.Detail = "in exchange for the bootstrap token"
	err = s.store.ExchangeBootstrapToken(ctx, t.ID, now, nt, revoked, created)
	if errors.Is(err, ErrNotFound) {
		err = s.bootstrapSpent(ctx) // another login used it meanwhile
	}
	if err != nil {
		return User{}, nil, "", err
	}
	s.notifySpent(ctx)
	return u, &nt, nextSecret, nil
}

// lookup finds the unrevoked, unexpired token of secret and its user.
func (s *Service) lookup(ctx context.Context, secret string) (APIToken, User, error) {
	fail := apperr.New(apperr.Unauthenticated, "bad_token", "the API token is unknown, revoked or expired: log in again with mandate login")
	if !strings.HasPrefix(secret, TokenPrefix+"_") || len(secret) > 200 {
		return APIToken{}, User{}, fail
	}
	hash := ids.Hash(secret)
	t, u, err := s.store.LookupAPIToken(ctx, hash)
	if errors.Is(err, ErrNotFound) {
		// A used bootstrap token is revoked: say so, rather than "unknown".
		_, berr := s.store.LookupBootstrapToken(ctx, hash)
		if berr == nil {
			return APIToken{}, User{}, s.bootstrapSpent(ctx)
		}
		if !errors.Is(berr, ErrNotFound) {
			return APIToken{}, User{}, fmt.Errorf("look up bootstrap token: %w", berr)
		}
		return APIToken{}, User{}, fail
	}
	if err != nil {
		return APIToken{}, User{}, fmt.Errorf("look up API token: %w", err)
	}
	if !t.Usable(s.now()) {
		if t.Bootstrap {
			return APIToken{}, User{}, s.bootstrapSpent(ctx)
		}
		return APIToken{}, User{}, fail
	}
	return t, u, nil
}

func (s *Service) notifySpent(ctx context.Context) {
	if s.spent != nil {
		s.spent(ctx)
	}
}

// bootstrapSpent tells the keeper of the bootstrap file, and returns the refusal its holder gets.
func (s *Service) bootstrapSpent(ctx context.Context) error {
	s.notifySpent(ctx)
	return apperr.New(apperr.Unauthenticated, "bootstrap_spent",
		"the bootstrap token was already used (or expired); ask an admin for a token: mandate tokens create")
}

// CreateUser adds a user; only an admin may. grantable, when not nil, bounds what the user may
// delegate to agents.
func (s *Service) CreateUser(ctx context.Context, requestID string, by User, name string, admin bool, grantable *Grantable) (User, error) {
	if !by.Admin {
		return User{}, apperr.New(apperr.Forbidden, "forbidden", "only an admin can create users")
	}
	if !nameRE.MatchString(name) {
		return User{}, apperr.New(apperr.Invalid, "name", "user name %q: use 1 to 63 lower-case letters, digits, dots, dashes and underscores", apperr.Clip(name, 70))
	}
	if grantable != nil && (admin || len(grantable.Scopes) == 0 || len(grantable.Resources) == 0) {
		return User{}, apperr.New(apperr.Invalid, "grantable", "a bound on what a user may grant needs scopes and resources, and does not apply to admins")
	}
	u := User{ID: ids.New("usr"), Name: name, Admin: admin, CreatedAt: s.now().UTC(), Grantable: grantable}
	ev := audit.New(s.now(), requestID, audit.ActionUserCreate)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, u.ID
	err := s.store.CreateUser(ctx, u, ev)
	if errors.Is(err, ErrNameTaken) {
		return User{}, apperr.Wrap(err, apperr.Conflict, "name_taken", "a user named %q exists", name)
	}
	if err != nil {
		return User{}, fmt.Errorf("create user %s: %w", name, err)
	}
	return u, nil
}

// ListUsers lists users; only an admin may.
func (s *Service) ListUsers(ctx context.Context, by User) ([]User, error) {
	if !by.Admin {
		return nil, apperr.New(apperr.Forbidden, "forbidden", "only an admin can list users")
	}
	return s.store.ListUsers(ctx)
}

// CreateToken issues an API token for userRef (empty = the caller); only an admin may for
// someone else. The secret is returned once and only its hash is kept.
func (s *Service) CreateToken(ctx context.Context, requestID string, by User, userRef, name string, ttl time.Duration) (APIToken, string, error) {
	if by.IsServiceAccount() {
		return APIToken{}, "", apperr.New(apperr.Forbidden, "forbidden", "a service account gets its tokens through federation, not API tokens")
	}
	owner := by
	if userRef != "" && userRef != by.ID && userRef != by.Name {
		if !by.Admin {
			return APIToken{}, "", apperr.New(apperr.Forbidden, "forbidden", "only an admin can create tokens for another user")
		}
		u, err := s.store.GetUser(ctx, userRef)
		if errors.Is(err, ErrNotFound) {
			return APIToken{}, "", apperr.Wrap(err, apperr.NotFound, "not_found", "no user %q", apperr.Clip(userRef, 70))
		}
		if err != nil {
			return APIToken{}, "", fmt.Errorf("get user %s: %w", userRef, err)
		}
		owner = u
	}
	if name == "" {
		name = "cli"
	}
	if ttl < 0 {
		return APIToken{}, "", apperr.New(apperr.Invalid, "ttl", "the token lifetime must be positive, or zero for no expiry")
	}
	secret := ids.Secret(TokenPrefix)
	now := s.now().UTC()
	t := APIToken{ID: ids.New("tok"), UserID: owner.ID, Name: apperr.Clip(name, 100), Hash: ids.Hash(secret), CreatedAt: now}
	if ttl > 0 {
		t.ExpiresAt = now.Add(ttl)
	}
	ev := audit.New(s.now(), requestID, audit.ActionAPITokenCreate)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, owner.ID, t.ID
	if err := s.store.CreateAPIToken(ctx, t, ev); err != nil {
		return APIToken{}, "", fmt.Errorf("create API token: %w", err)
	}
	return t, secret, nil
}

// ListTokens lists the caller's API tokens (an admin may name another user).
func (s *Service) ListTokens(ctx context.Context, by User, userRef string) ([]APIToken, error) {
	id := by.ID
	if userRef != "" && userRef != by.ID && userRef != by.Name {
		if !by.Admin {
			return nil, apperr.New(apperr.Forbidden, "forbidden", "only an admin can list another user's tokens")
		}
		u, err := s.store.GetUser(ctx, userRef)
		if errors.Is(err, ErrNotFound) {
			return nil, apperr.Wrap(err, apperr.NotFound, "not_found", "no user %q", apperr.Clip(userRef, 70))
		}
		if err != nil {
			return nil, fmt.Errorf("get user %s: %w", userRef, err)
		}
		id = u.ID
	}
	return s.store.ListAPITokens(ctx, id)
}

// RevokeToken revokes one of the caller's API tokens (an admin may revoke any).
func (s *Service) RevokeToken(ctx context.Context, requestID string, by User, tokenID string) error {
	if !by.Admin {
		toks, err := s.store.ListAPITokens(ctx, by.ID)
		if err != nil {
			return fmt.Errorf("list API tokens: %w", err)
		}
		if !containsToken(toks, tokenID) {
			return apperr.New(apperr.NotFound, "not_found", "you have no API token %q: see mandate tokens list", apperr.Clip(tokenID, 70))
		}
	}
	ev := audit.New(s.now(), requestID, audit.ActionAPITokenRevoke)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, tokenID
	err := s.store.RevokeAPIToken(ctx, tokenID, s.now().UTC(), ev)
	if errors.Is(err, ErrNotFound) {
		return apperr.Wrap(err, apperr.NotFound, "not_found", "no API token %q", apperr.Clip(tokenID, 70))
	}
	return err
}

func containsToken(toks []APIToken, id string) bool {
	for _, t := range toks {
		if t.ID == id {
			return true
		}
	}
	return false
}
