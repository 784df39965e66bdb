package federation

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/principal"
)

// ServiceAccounts finds the service accounts rules act as.
type ServiceAccounts interface {
	GetServiceAccount(ctx context.Context, ref string) (principal.ServiceAccount, error) // principal.ErrNotFound when unknown
}

// Config wires a Service.
type Config struct {
	Store           Store
	ServiceAccounts ServiceAccounts
	HTTPClient      *http.Client  // nil = one with a 10s timeout; used for discovery and JWKS
	RefreshInterval time.Duration // least time between two JWKS fetches of one issuer caused by an unknown kid; default 1m
	ClockSkew       time.Duration // default 60s
	Now             func() time.Time
	Log             *slog.Logger // nil = discard
}

// Service manages trusted issuers and rules, and matches assertions against them.
type Service struct {
	cfg   Config
	keys  *keyCache
	conds *conditions
}

// New returns the federation service.
func New(cfg Config) *Service {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: checkRedirect}
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = time.Minute
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = 60 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, conds: newConditions()}
	s.keys = newKeyCache(cfg.HTTPClient, cfg.RefreshInterval, cfg.Log)
	return s
}

// checkRedirect lets discovery and JWKS requests follow a few redirects, only to URLs an issuer
// could be configured with (https, or http on loopback).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("more than 5 redirects")
	}
	return checkFetchURL(req.URL.String())
}

func requireAdmin(by principal.User, what string) error {
	if !by.Admin {
		return apperr.New(apperr.Forbidden, "forbidden", "only an admin can %s", what)
	}
	return nil
}

// event starts the audit event of a management action by an admin.
func (s *Service) event(requestID, action string, by principal.User, target string) audit.Event {
	ev := audit.New(s.cfg.Now(), requestID, action)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, target
	return ev
}
