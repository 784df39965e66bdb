package federation

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/principal"
)

// maxAssertionLifetimeBound caps Issuer.MaxAssertionLifetime: a workload token valid for more
// than a day is a static secret by another name.
const maxAssertionLifetimeBound = 24 * time.Hour

// AddIssuer trusts an issuer. A discovery issuer's configuration and keys are fetched now, so a
// typo or an unreachable issuer is refused at once rather than on the first assertion.
func (s *Service) AddIssuer(ctx context.Context, requestID string, by principal.User, is Issuer) (Issuer, error) {
	if err := requireAdmin(by, "add a trusted issuer"); err != nil {
		return Issuer{}, err
	}
	if err := checkIssuerURL(is.URL); err != nil {
		return Issuer{}, err
	}
	switch {
	case is.MaxAssertionLifetime == 0:
		is.MaxAssertionLifetime = DefaultMaxAssertionLifetime
	case is.MaxAssertionLifetime < 0 || is.MaxAssertionLifetime > maxAssertionLifetimeBound:
		return Issuer{}, apperr.New(apperr.Invalid, "issuer", "the maximum assertion lifetime must be positive and at most %v (0 = the default, %v)", maxAssertionLifetimeBound, DefaultMaxAssertionLifetime)
	}
	if _, known := sharedIssuers[is.URL]; known {
		is.Shared = true
	}
	is.CreatedAt = s.cfg.Now().UTC()

	var fetched fetchedKeys
	if is.JWKS != nil {
		keys, err := parseJWKS(is.JWKS)
		if err != nil {
			return Issuer{}, apperr.Wrap(err, apperr.Invalid, "jwks", "the pinned JWKS is not a JWK set: give a JSON object with a keys array (a JWKS file or a SPIFFE trust bundle)")
		}
		if len(keys) == 0 {
			return Issuer{}, apperr.New(apperr.Invalid, "jwks", "the pinned JWKS holds no usable public signing key: it needs an RSA (≥ 2048 bits), P-256, P-384 or Ed25519 public key with use sig or jwt-svid")
		}
	} else {
		var err error
		if fetched, err = fetchKeys(ctx, s.cfg.HTTPClient, is.URL, ""); err != nil {
			return Issuer{}, apperr.New(apperr.Invalid, "discovery",
				"OIDC discovery of %s failed (%v): check the URL is the exact iss of its tokens and that %s%s serves a jwks_uri, or pin a JWKS instead",
				is.URL, err, strings.TrimSuffix(is.URL, "/"), discoveryPath)
		}
	}

	ev := s.event(requestID, ActionIssuerAdd, by, is.URL)
	ev.Detail = issuerDetail(is, fetched)
	switch err := s.cfg.Store.CreateIssuer(ctx, is, ev); {
	case errors.Is(err, ErrExists):
		return Issuer{}, apperr.Wrap(err, apperr.Conflict, "issuer_exists", "issuer %s is already trusted; remove it first to change it", is.URL)
	case err != nil:
		return Issuer{}, fmt.Errorf("add issuer %s: %w", is.URL, err)
	}
	s.keys.drop(is.URL)
	if is.JWKS == nil {
		s.keys.install(is, fetched.jwksURI, fetched.keys, fetched.ttl, s.cfg.Now())
	}
	return is, nil
}

func issuerDetail(is Issuer, fetched fetchedKeys) string {
	keys := "pinned JWKS"
	if is.JWKS == nil {
		keys = fmt.Sprintf("discovery, jwks_uri %s (%d keys)", fetched.jwksURI, len(fetched.keys))
	}
	return fmt.Sprintf("%s; max assertion lifetime %v; require jti %t; shared %t", keys, is.MaxAssertionLifetime, is.RequireJTI, is.Shared)
}

// checkIssuerURL accepts what may appear as iss: https (http on loopback for tests) with a
// host, and no query or fragment (OpenID Connect Core §2).
func checkIssuerURL(raw string) error {
	fail := func(why string) error {
		return apperr.New(apperr.Invalid, "issuer_url", "issuer URL %q %s: give the exact iss of the tokens, e.g. https://token.actions.githubusercontent.com", apperr.Clip(raw, 100), why)
	}
	if strings.ContainsAny(raw, "?#") {
		return fail("has a query or fragment")
	}
	if _, err := url.Parse(raw); err != nil {
		return fail("is not a URL")
	}
	if err := checkFetchURL(raw); err != nil {
		return fail(err.Error())
	}
	return nil
}

// RemoveIssuer stops trusting an issuer, and deletes its rules.
func (s *Service) RemoveIssuer(ctx context.Context, requestID string, by principal.User, url string) error {
	if err := requireAdmin(by, "remove a trusted issuer"); err != nil {
		return err
	}
	ev := s.event(requestID, ActionIssuerRemove, by, url)
	switch err := s.cfg.Store.RemoveIssuer(ctx, url, ev); {
	case errors.Is(err, ErrNotFound):
		return apperr.Wrap(err, apperr.NotFound, "not_found", "issuer %q is not trusted: see the list of issuers", apperr.Clip(url, 100))
	case err != nil:
		return fmt.Errorf("remove issuer %s: %w", url, err)
	}
	s.keys.drop(url)
	return nil
}

// ListIssuers lists the trusted issuers.
func (s *Service) ListIssuers(ctx context.Context, by principal.User) ([]Issuer, error) {
	if err := requireAdmin(by, "list trusted issuers"); err != nil {
		return nil, err
	}
	list, err := s.cfg.Store.ListIssuers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list issuers: %w", err)
	}
	return list, nil
}
