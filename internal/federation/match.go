package federation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/principal"
)

// Match verifies an external assertion and finds the rule it matches. A refusal is a *Refusal;
// any other error is internal. The jti is not used up here: the caller commits it with the
// token it issues.
func (s *Service) Match(ctx context.Context, raw string) (Match, error) {
	a, ref := parseAssertion(raw)
	if ref != nil {
		return Match{}, ref
	}
	is, err := s.issuerOf(ctx, a.iss)
	if err != nil {
		return Match{}, err
	}
	if ref := checkAlg(a); ref != nil {
		return Match{}, ref
	}
	if keyRef, sigRef := s.verify(ctx, is, a); keyRef != nil || sigRef != nil {
		return Match{}, firstRefusal(keyRef, sigRef)
	}
	rules, err := s.cfg.Store.ListRules(ctx, is.URL)
	if err != nil {
		return Match{}, fmt.Errorf("list rules of %s: %w", is.URL, err)
	}
	if len(rules) == 0 {
		return Match{}, refuse(ReasonNoRule, "issuer %s has no rules", is.URL)
	}
	var candidates []Rule
	for _, r := range rules {
		if slices.Contains(a.aud, r.Audience) {
			candidates = append(candidates, r)
		}
	}
	if len(candidates) == 0 {
		return Match{}, refuse(ReasonAudience, "aud %s names no audience of a rule of issuer %s", quoteList(a.aud), is.URL)
	}
	for _, c := range s.assertionChecks(is, a) {
		if ref := c.run(); ref != nil {
			return Match{}, ref
		}
	}
	var first *Refusal
	for _, r := range candidates {
		sa, ref, err := s.matchRule(ctx, r, a)
		if err != nil {
			return Match{}, err
		}
		if ref == nil {
			return Match{Rule: r, ServiceAccount: sa, Issuer: is, Subject: a.sub, JTI: a.jti,
				IssuedAt: timeOrZero(a.iat), ExpiresAt: *a.exp, Claims: a.claims}, nil
		}
		if first == nil {
			first = ref
		}
	}
	return Match{}, first
}

func firstRefusal(refs ...*Refusal) *Refusal {
	for _, r := range refs {
		if r != nil {
			return r
		}
	}
	return nil
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func quoteList(list []string) string {
	if len(list) == 0 {
		return "(none)"
	}
	q := make([]string, len(list))
	for i, v := range list {
		q[i] = fmt.Sprintf("%q", clip(v))
	}
	return "[" + strings.Join(q, " ") + "]"
}

// issuerOf returns the trusted issuer named by iss, or an unknown_issuer refusal.
func (s *Service) issuerOf(ctx context.Context, iss string) (Issuer, error) {
	if iss == "" {
		return Issuer{}, refuse(ReasonUnknownIssuer, "the assertion has no iss claim")
	}
	is, err := s.cfg.Store.GetIssuer(ctx, iss)
	switch {
	case errors.Is(err, ErrNotFound):
		return Issuer{}, refuse(ReasonUnknownIssuer, "iss %q is not a trusted issuer", clip(iss))
	case err != nil:
		return Issuer{}, fmt.Errorf("get issuer: %w", err)
	}
	return is, nil
}

// check is one named step of matching; run returns nil when it passes.
type check struct {
	name string
	run  func() *Refusal
	ok   string // what passing means, for the dry-run report
}

// assertionChecks are the checks of an assertion's validity that do not depend on a rule.
func (s *Service) assertionChecks(is Issuer, a *assertion) []check {
	now, skew := s.cfg.Now(), s.cfg.ClockSkew
	maxLife := is.MaxAssertionLifetime
	if maxLife <= 0 {
		maxLife = DefaultMaxAssertionLifetime
	}
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	return []check{
		{"exp", func() *Refusal {
			switch {
			case a.exp == nil:
				return refuse(ReasonExpired, "the assertion has no exp claim")
			case !now.Before(a.exp.Add(skew)):
				return refuse(ReasonExpired, "the assertion expired at %s (now %s, %v clock skew allowed)", stamp(*a.exp), stamp(now), skew)
			}
			return nil
		}, exists(a.exp, func(t time.Time) string {
			return "expires at " + stamp(t) + " (in " + t.Sub(now).Round(time.Second).String() + ")"
		})},
		{"nbf", func() *Refusal {
			if a.nbf != nil && a.nbf.After(now.Add(skew)) {
				return refuse(ReasonNotYetValid, "the assertion is not valid before %s (now %s, %v clock skew allowed)", stamp(*a.nbf), stamp(now), skew)
			}
			return nil
		}, exists(a.nbf, func(t time.Time) string { return "valid from " + stamp(t) })},
		{"iat", func() *Refusal {
			if a.iat != nil && a.iat.After(now.Add(skew)) {
				return refuse(ReasonIssuedInFuture, "the assertion was issued in the future, at %s (now %s, %v clock skew allowed)", stamp(*a.iat), stamp(now), skew)
			}
			return nil
		}, exists(a.iat, func(t time.Time) string { return "issued at " + stamp(t) })},
		{"lifetime", func() *Refusal {
			if a.exp == nil {
				return refuse(ReasonLifetime, "the assertion has no exp claim, so its lifetime is unbounded")
			}
			start, from := now, "now"
			switch {
			case a.iat != nil:
				start, from = *a.iat, "iat"
			case a.nbf != nil:
				start, from = *a.nbf, "nbf"
			}
			if life := a.exp.Sub(start); life > maxLife {
				return refuse(ReasonLifetime, "the assertion is valid for %v from %s to exp, more than the %v issuer %s allows", life, from, maxLife, is.URL)
			}
			return nil
		}, fmt.Sprintf("at most the %v the issuer allows", maxLife)},
		{"jti", func() *Refusal {
			if is.RequireJTI && a.jti == "" {
				return refuse(ReasonJTIMissing, "issuer %s requires a jti and the assertion has none", is.URL)
			}
			return nil
		}, map[bool]string{true: "present (used once at the exchange)", false: "not required by the issuer"}[is.RequireJTI]},
	}
}

// ruleChecks are the conditions of one rule, in order. The service account is looked up last,
// and only when it is reached: it fills sa, or sets *internal when the lookup itself failed
// (the check then also fails, so no caller goes on with an unknown account).
func (s *Service) ruleChecks(ctx context.Context, r Rule, a *assertion, sa *principal.ServiceAccount, internal *error) []check {
	checks := []check{{"enabled", func() *Refusal {
		if r.Disabled {
			return refuse(ReasonRuleDisabled, "rule %s is disabled", r.ID)
		}
		return nil
	}, "the rule is enabled"}}
	if r.SubjectPrefix != "" {
		checks = append(checks, check{"subject", func() *Refusal {
			if !strings.HasPrefix(a.sub, r.SubjectPrefix) {
				return refuse(ReasonSubject, "sub %q does not start with %q (rule %s)", clip(a.sub), r.SubjectPrefix, r.ID)
			}
			return nil
		}, fmt.Sprintf("sub %q starts with %q", clip(a.sub), r.SubjectPrefix)})
	}
	for _, name := range sortedKeys(r.Claims) {
		want := r.Claims[name]
		checks = append(checks, check{"claim " + name, func() *Refusal {
			v, ok := lookupClaim(a.claims, name)
			if !ok {
				return refuse(ReasonClaim, "claim %s is absent; rule %s wants %q", name, r.ID, want)
			}
			got, ok := claimString(v)
			switch {
			case !ok:
				return refuse(ReasonClaim, "claim %s is %s; rule %s wants %q", name, describe(v), r.ID, want)
			case got != want:
				return refuse(ReasonClaim, "claim %s is %q; rule %s wants %q", name, clip(got), r.ID, want)
			}
			return nil
		}, fmt.Sprintf("%s is %q", name, want)})
	}
	if r.Condition != "" {
		checks = append(checks, check{"condition", func() *Refusal { return s.conds.eval(r, a.claims) }, "true: " + apperr.Clip(r.Condition, 200)})
	}
	return append(checks, check{"service_account", func() *Refusal {
		got, err := s.cfg.ServiceAccounts.GetServiceAccount(ctx, r.ServiceAccount)
		switch {
		case errors.Is(err, principal.ErrNotFound):
			return refuse(ReasonServiceAccountDisabled, "service account %s of rule %s no longer exists", r.ServiceAccount, r.ID)
		case err != nil:
			*internal = fmt.Errorf("get service account %s: %w", r.ServiceAccount, err)
			return refuse(ReasonServiceAccountDisabled, "service account %s of rule %s could not be read", r.ServiceAccount, r.ID)
		case got.Disabled:
			return refuse(ReasonServiceAccountDisabled, "service account %s of rule %s is disabled", got.Name, r.ID)
		}
		*sa = got
		return nil
	}, "service account " + r.ServiceAccount + " is enabled"})
}

// exists describes an optional time claim for the report.
func exists(t *time.Time, say func(time.Time) string) string {
	if t == nil {
		return "absent"
	}
	return say(*t)
}

// matchRule runs the checks of one rule and returns the first refusal.
func (s *Service) matchRule(ctx context.Context, r Rule, a *assertion) (principal.ServiceAccount, *Refusal, error) {
	var sa principal.ServiceAccount
	var internal error
	for _, c := range s.ruleChecks(ctx, r, a, &sa, &internal) {
		if ref := c.run(); ref != nil {
			return principal.ServiceAccount{}, ref, internal
		}
	}
	return sa, nil, nil
}
