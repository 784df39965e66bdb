package federation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
)

// AddRule maps assertions of a trusted issuer to a service account.
func (s *Service) AddRule(ctx context.Context, requestID string, by principal.User, r Rule) (Rule, error) {
	if err := requireAdmin(by, "add a federation rule"); err != nil {
		return Rule{}, err
	}
	is, err := s.cfg.Store.GetIssuer(ctx, r.Issuer)
	switch {
	case errors.Is(err, ErrNotFound):
		return Rule{}, invalidRule("issuer %q is not trusted: add it first, or give its exact URL", apperr.Clip(r.Issuer, 100))
	case err != nil:
		return Rule{}, fmt.Errorf("add rule: %w", err)
	}
	cond, err := s.checkRule(ctx, &r)
	if err != nil {
		return Rule{}, err
	}
	if t, shared := tenancyOf(is); shared && !t.pins(r, cond) {
		return Rule{}, invalidRule("issuer %s is shared by many tenants and this rule would accept tokens of all of them: pin the tenant with %s", is.URL, t.pinHint())
	}
	r.ID, r.CreatedAt = ids.New("fr"), s.cfg.Now().UTC()
	ev := s.event(requestID, ActionRuleAdd, by, r.ID)
	ev.Detail = fmt.Sprintf("issuer %s, audience %q, acts as %s with scopes %s", r.Issuer, clip(r.Audience), r.ServiceAccount, strings.Join(r.Scopes, " "))
	switch err := s.cfg.Store.CreateRule(ctx, r, ev); {
	case errors.Is(err, ErrNotFound):
		return Rule{}, apperr.Wrap(err, apperr.Conflict, "rule", "the issuer or the service account was removed meanwhile: check both and try again")
	case err != nil:
		return Rule{}, fmt.Errorf("add rule: %w", err)
	}
	return r, nil
}

func invalidRule(format string, args ...any) error {
	return apperr.New(apperr.Invalid, "rule", format, args...)
}

// checkRule validates r and fills its defaults; it returns the compiled condition, if any.
func (s *Service) checkRule(ctx context.Context, r *Rule) (*cel.Ast, error) {
	if r.Audience == "" {
		return nil, invalidRule("the rule needs an audience: the aud the workload asks its platform for, e.g. the URL of this server")
	}
	if r.SubjectPrefix == "" && len(r.Claims) == 0 && r.Condition == "" {
		return nil, invalidRule("the rule needs at least one condition: a subject prefix, exact claims or a CEL condition")
	}
	for _, name := range sortedKeys(r.Claims) {
		if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
			return nil, invalidRule("claim name %q is not a claim path: use a name, or names of nested objects separated by /", apperr.Clip(name, 100))
		}
	}
	var cond *cel.Ast
	if r.Condition != "" {
		var err error
		if cond, _, err = s.conds.compile(r.Condition); err != nil {
			return nil, err
		}
	}
	sa, err := s.cfg.ServiceAccounts.GetServiceAccount(ctx, r.ServiceAccount)
	switch {
	case errors.Is(err, principal.ErrNotFound):
		return nil, invalidRule("no service account %q: create it first, or give its id or name", apperr.Clip(r.ServiceAccount, 100))
	case err != nil:
		return nil, fmt.Errorf("get service account: %w", err)
	case sa.Disabled:
		return nil, invalidRule("service account %s is disabled: enable it first", sa.Name)
	}
	r.ServiceAccount = sa.ID
	if len(r.Scopes) == 0 {
		return nil, invalidRule("the rule needs at least one scope: the scopes its tokens may carry")
	}
	for _, sc := range r.Scopes {
		if !delegation.ValidScopeToken(sc) {
			return nil, invalidRule("scope %q is not a valid scope token (RFC 6749 §3.3): use printable ASCII without spaces, quotes or backslashes", apperr.Clip(sc, 100))
		}
	}
	for _, res := range r.Resources {
		if err := checkResource(res); err != nil {
			return nil, invalidRule("resource %q %v: give an absolute https URI without fragment (RFC 8707)", apperr.Clip(res, 100), err)
		}
	}
	switch {
	case r.TokenTTL == 0:
		r.TokenTTL = DefaultTokenTTL
	case r.TokenTTL < 0 || r.TokenTTL > MaxTokenTTL:
		return nil, invalidRule("the token lifetime must be positive and at most %v (0 = the default, %v)", MaxTokenTTL, DefaultTokenTTL)
	}
	return cond, nil
}

// checkResource accepts an RFC 8707 resource indicator: absolute, no fragment; https, or http
// on loopback.
func checkResource(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return errors.New("is not a URI")
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return errors.New("has a fragment")
	}
	return checkFetchURL(raw)
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// GetRule returns one rule.
func (s *Service) GetRule(ctx context.Context, by principal.User, id string) (Rule, error) {
	if err := requireAdmin(by, "see federation rules"); err != nil {
		return Rule{}, err
	}
	return s.getRule(ctx, id)
}

// ActiveRule returns the rule a service-account token was issued under, while it still exists
// and is enabled: disabling a rule (or removing its issuer) stops its tokens at once. Refusals
// are Unauthenticated.
func (s *Service) ActiveRule(ctx context.Context, id string) (Rule, error) {
	r, err := s.cfg.Store.GetRule(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Rule{}, apperr.New(apperr.Unauthenticated, "rule_removed", "the federation rule this token was issued under no longer exists: get a new token")
	case err != nil:
		return Rule{}, fmt.Errorf("get rule %s: %w", id, err)
	case r.Disabled:
		return Rule{}, apperr.New(apperr.Unauthenticated, "rule_disabled", "the federation rule this token was issued under is disabled")
	}
	return r, nil
}

func (s *Service) getRule(ctx context.Context, id string) (Rule, error) {
	r, err := s.cfg.Store.GetRule(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Rule{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no federation rule %q: see the list of rules", apperr.Clip(id, 70))
	case err != nil:
		return Rule{}, fmt.Errorf("get rule %s: %w", id, err)
	}
	return r, nil
}

// ListRules lists the rules of one issuer ("" = all), oldest first.
func (s *Service) ListRules(ctx context.Context, by principal.User, issuer string) ([]Rule, error) {
	if err := requireAdmin(by, "list federation rules"); err != nil {
		return nil, err
	}
	rules, err := s.cfg.Store.ListRules(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return rules, nil
}

// SetRuleDisabled disables or enables a rule.
func (s *Service) SetRuleDisabled(ctx context.Context, requestID string, by principal.User, id string, disabled bool) (Rule, error) {
	if err := requireAdmin(by, "disable or enable a federation rule"); err != nil {
		return Rule{}, err
	}
	r, err := s.getRule(ctx, id)
	if err != nil {
		return Rule{}, err
	}
	action := ActionRuleEnable
	if disabled {
		action = ActionRuleDisable
	}
	switch err := s.cfg.Store.SetRuleDisabled(ctx, id, disabled, s.event(requestID, action, by, id)); {
	case errors.Is(err, ErrNotFound):
		return Rule{}, apperr.Wrap(err, apperr.NotFound, "not_found", "no federation rule %q: see the list of rules", apperr.Clip(id, 70))
	case err != nil:
		return Rule{}, fmt.Errorf("set rule %s disabled: %w", id, err)
	}
	r.Disabled = disabled
	return r, nil
}
