package federation

import (
	"context"
	"fmt"
	"slices"

	"github.com/mandate-dev/mandate/internal/principal"
)

// Test is a dry run for people writing rules: it runs every check of one rule against an
// assertion and reports each with pass or fail. It does not stop at the first failure (only
// checks that cannot be evaluated are reported as not checked) and uses up no jti.
func (s *Service) Test(ctx context.Context, by principal.User, ruleID, raw string) (rep Report, err error) {
	if err := requireAdmin(by, "test federation rules"); err != nil {
		return Report{}, err
	}
	r, err := s.getRule(ctx, ruleID)
	if err != nil {
		return Report{}, err
	}
	rep = Report{Rule: r}
	add := func(name string, ref *Refusal, passed string) {
		c := Check{Name: name, OK: ref == nil, Detail: passed}
		if ref != nil {
			c.Detail = ref.Reason + ": " + ref.Detail
		}
		rep.Checks = append(rep.Checks, c)
	}
	skip := func(name, why string) {
		rep.Checks = append(rep.Checks, Check{Name: name, Detail: "not checked: " + why})
	}
	defer func() { // every return below reports OK from the checks made so far
		rep.OK = len(rep.Checks) > 0 && !slices.ContainsFunc(rep.Checks, func(c Check) bool { return !c.OK })
	}()

	a, ref := parseAssertion(raw)
	add("parse", ref, "a compact JWS with a JSON object of claims")
	if ref != nil {
		return rep, nil
	}
	rep.Claims = a.claims

	// The rule's issuer is the one whose keys and limits apply, whatever the assertion says.
	is, err := s.issuerOf(ctx, r.Issuer)
	if err != nil {
		return Report{}, fmt.Errorf("issuer of rule %s: %w", r.ID, err)
	}
	if a.iss != r.Issuer {
		add("issuer", refuse(ReasonUnknownIssuer, "iss %q is not the rule's issuer %s", clip(a.iss), r.Issuer), "")
	} else {
		add("issuer", nil, "iss is the rule's issuer")
	}
	algRef := checkAlg(a)
	add("alg", algRef, "alg "+a.alg)
	if algRef != nil {
		skip("key", "the alg is not accepted")
		skip("signature", "the alg is not accepted")
	} else {
		keyRef, sigRef := s.verify(ctx, is, a)
		add("key", keyRef, fmt.Sprintf("a key of the issuer fits kid %q and alg %s", clip(a.kid), a.alg))
		if keyRef != nil {
			skip("signature", "no key to verify with")
		} else {
			add("signature", sigRef, "verified")
		}
	}
	if !slices.Contains(a.aud, r.Audience) {
		add("audience", refuse(ReasonAudience, "aud %s does not name the rule's audience %q", quoteList(a.aud), r.Audience), "")
	} else {
		add("audience", nil, fmt.Sprintf("aud names %q", r.Audience))
	}
	for _, c := range s.assertionChecks(is, a) {
		add(c.name, c.run(), c.ok)
	}
	var sa principal.ServiceAccount
	var internal error
	for _, c := range s.ruleChecks(ctx, r, a, &sa, &internal) {
		add(c.name, c.run(), c.ok)
		if internal != nil {
			return Report{}, internal
		}
	}
	return rep, nil
}
