package federation_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

// checkOutcome is a Check without its detail, to compare reports.
type checkOutcome struct {
	Name string
	OK   bool
}

func outcomes(rep federation.Report) []checkOutcome {
	var out []checkOutcome
	for _, c := range rep.Checks {
		out = append(out, checkOutcome{c.Name, c.OK})
	}
	return out
}

func TestReportListsEveryCheck(t *testing.T) {
	e, iss, rules := matchEnv(t)
	rule := e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, SubjectPrefix: "repo:acme/",
		Claims: map[string]string{"repository_owner": "acme", "ref_type": "branch"}, Condition: `claims.ref == "refs/heads/main"`})

	// Expired and from another owner: two checks fail, every other one is still run.
	claims := iss.GitHubActions(aud, "evil/app", "")
	claims["iat"] = e.clock.Now().Add(-10 * time.Minute).Unix()
	claims["nbf"] = claims["iat"]
	claims["exp"] = e.clock.Now().Add(-5 * time.Minute).Unix()
	assertion := iss.Mint(claims)

	rep, err := e.svc.Test(t.Context(), admin, rule.ID, assertion)
	if err != nil {
		t.Fatal(err)
	}
	want := []checkOutcome{
		{"parse", true}, {"issuer", true}, {"alg", true}, {"key", true}, {"signature", true}, {"audience", true},
		{"exp", false}, {"nbf", true}, {"iat", true}, {"lifetime", true}, {"jti", true},
		{"enabled", true}, {"subject", false}, {"claim ref_type", true}, {"claim repository_owner", false},
		{"condition", true}, {"service_account", true},
	}
	if diff := cmp.Diff(want, outcomes(rep)); diff != "" {
		t.Errorf("checks (-want +got):\n%s", diff)
	}
	if rep.OK || rep.Rule.ID != rule.ID || rep.Claims["repository"] != "evil/app" {
		t.Errorf("OK %t rule %s claims %v", rep.OK, rep.Rule.ID, rep.Claims["repository"])
	}
	for _, c := range rep.Checks {
		if !c.OK && c.Detail == "" {
			t.Errorf("check %s failed without a detail", c.Name)
		}
	}
	if d := rep.Checks[12].Detail; !strings.Contains(d, `sub "repo:evil/app:ref:refs/heads/main" does not start with "repo:acme/"`) {
		t.Errorf("subject detail %q", d)
	}

	// A passing token, tested twice: Test uses up nothing.
	good := iss.Mint(iss.GitHubActions(aud, "acme/app", ""))
	for range 2 {
		rep, err := e.svc.Test(t.Context(), admin, rule.ID, good)
		if err != nil || !rep.OK {
			t.Fatalf("Test: %v %+v", err, rep.Checks)
		}
	}
	if m, reason := e.match(good); reason != "" || m.Rule.ID != rules["main"].ID {
		t.Errorf("Match after Test: %q %s", reason, m.Rule.ID)
	}
}

func TestReportNotChecked(t *testing.T) {
	e, iss, rules := matchEnv(t)
	rep, err := e.svc.Test(t.Context(), admin, rules["main"].ID, iss.Mint(iss.GitHubActions(aud, "acme/app", ""), oidctest.Unsigned()))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]federation.Check{}
	for _, c := range rep.Checks {
		got[c.Name] = c
	}
	if got["alg"].OK || got["signature"].OK || !strings.HasPrefix(got["signature"].Detail, "not checked") || !got["condition"].OK {
		t.Errorf("checks %+v", rep.Checks)
	}

	rep, err = e.svc.Test(t.Context(), admin, rules["main"].ID, "garbage")
	if err != nil || rep.OK || len(rep.Checks) != 1 || rep.Checks[0].Name != "parse" {
		t.Errorf("garbage: %v %+v", err, rep)
	}
	if _, err := e.svc.Test(t.Context(), notAdm, rules["main"].ID, "x"); !isKind(err, apperr.Forbidden) {
		t.Errorf("Test by a non-admin: %v", err)
	}
	if _, err := e.svc.Test(t.Context(), admin, "fr_nope", "x"); !isKind(err, apperr.NotFound) {
		t.Errorf("Test of an unknown rule: %v", err)
	}
}
