package federation_test

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/federation"
)

const (
	github    = "https://token.actions.githubusercontent.com"
	gitlab    = "https://gitlab.com"
	buildkite = "https://agent.buildkite.com"
	terraform = "https://app.terraform.io"
	google    = "https://accounts.google.com"
	custom    = "https://ci.shared.example" // marked shared by the operator
	single    = "https://k8s.example"
)

// rulesEnv trusts the known shared issuers (with pinned keys: they are not reachable from
// tests), a custom shared one and a single-tenant one.
func rulesEnv(t testing.TB) *env {
	e := newEnv(t)
	jwks := []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k"}]}`)
	for _, url := range []string{github, gitlab, buildkite, terraform, google, single} {
		e.addIssuer(federation.Issuer{URL: url, JWKS: jwks})
	}
	e.addIssuer(federation.Issuer{URL: custom, JWKS: jwks, Shared: true})
	off := e.accounts.add("off")
	e.accounts.setDisabled(off.Name, true)
	return e
}

func TestAddRuleTenantPinning(t *testing.T) {
	e := rulesEnv(t)
	tests := []struct {
		issuer        string
		subjectPrefix string
		claims        map[string]string
		condition     string
		ok            bool
	}{
		// GitHub Actions: repo:OWNER/ or a repository claim.
		{issuer: github, subjectPrefix: "repo:acme/", ok: true},
		{issuer: github, subjectPrefix: "repo:acme/app:ref:refs/heads/main", ok: true},
		{issuer: github, subjectPrefix: "repo:acme"},
		{issuer: github, subjectPrefix: "repo:"},
		{issuer: github, subjectPrefix: "repo:/"},
		{issuer: github, claims: map[string]string{"repository_owner": "acme"}, ok: true},
		{issuer: github, claims: map[string]string{"repository": "acme/app"}, ok: true},
		{issuer: github, claims: map[string]string{"repository_id": "123"}, ok: true},
		{issuer: github, claims: map[string]string{"repository_owner_id": "456"}, ok: true},
		{issuer: github, claims: map[string]string{"sub": "repo:acme/app:ref:refs/heads/main"}, ok: true},
		{issuer: github, claims: map[string]string{"repository_owner": ""}},
		{issuer: github, claims: map[string]string{"ref": "refs/heads/main", "environment": "prod"}},
		{issuer: github, condition: `claims.repository_owner == "acme"`, ok: true},
		{issuer: github, condition: `"acme" == assertion.repository_owner`, ok: true},
		{issuer: github, condition: `claims["repository"] == "acme/app"`, ok: true},
		{issuer: github, condition: `claims.repository_owner in ["acme", "acme-labs"]`, ok: true},
		{issuer: github, condition: `claims.sub.startsWith("repo:acme/")`, ok: true},
		{issuer: github, condition: `claims.ref == "refs/heads/main" && (claims.environment == "prod" && claims.repository_owner == "acme")`, ok: true},
		{issuer: github, condition: `claims.sub.startsWith("repo:acme")`},
		{issuer: github, condition: `claims.repository_owner == "acme" || claims.ref == "refs/heads/main"`},
		{issuer: github, condition: `claims.repository_owner != "evil"`},
		{issuer: github, condition: `claims.repository_owner in ["acme", claims.actor]`},
		{issuer: github, condition: `claims.repository_owner.startsWith("acme")`},
		{issuer: github, condition: `claims.ref == "refs/heads/main"`},
		{issuer: github, condition: `has(claims.repository_owner)`},
		// GitLab: project_path:GROUP/ or a namespace/project claim.
		{issuer: gitlab, subjectPrefix: "project_path:acme/", ok: true},
		{issuer: gitlab, subjectPrefix: "project_path:acme"},
		{issuer: gitlab, claims: map[string]string{"namespace_path": "acme"}, ok: true},
		{issuer: gitlab, claims: map[string]string{"project_id": "42"}, ok: true},
		{issuer: gitlab, condition: `claims.namespace_id == "72"`, ok: true},
		{issuer: gitlab, claims: map[string]string{"ref": "main"}},
		// Buildkite and Terraform Cloud: organization:NAME:.
		{issuer: buildkite, subjectPrefix: "organization:acme:", ok: true},
		{issuer: buildkite, subjectPrefix: "organization:acme"},
		{issuer: buildkite, claims: map[string]string{"organization_slug": "acme"}, ok: true},
		{issuer: buildkite, condition: `claims.sub.startsWith("organization:acme:pipeline:deploy")`, ok: true},
		{issuer: terraform, subjectPrefix: "organization:acme:project:", ok: true},
		{issuer: terraform, claims: map[string]string{"terraform_organization_name": "acme"}, ok: true},
		{issuer: terraform, claims: map[string]string{"terraform_organization_id": "org-123"}, ok: true},
		{issuer: terraform, claims: map[string]string{"terraform_workspace_name": "prod"}},
		// Google: no sub prefix pins; exact sub, email, hd or azp do.
		{issuer: google, subjectPrefix: "1234"},
		{issuer: google, condition: `claims.sub.startsWith("1")`},
		{issuer: google, claims: map[string]string{"sub": "112233445566778899"}, ok: true},
		{issuer: google, claims: map[string]string{"email": "ci@acme.iam.gserviceaccount.com"}, ok: true},
		{issuer: google, condition: `claims.hd == "acme.com" && claims.email_verified == true`, ok: true},
		{issuer: google, claims: map[string]string{"email_verified": "true"}},
		// An operator-marked shared issuer: any exact non-registered claim pins.
		{issuer: custom, claims: map[string]string{"team": "payments"}, ok: true},
		{issuer: custom, condition: `claims.team == "payments"`, ok: true},
		{issuer: custom, claims: map[string]string{"aud": "x"}},
		{issuer: custom, subjectPrefix: "team:payments:"},
		// A single-tenant issuer needs no pin.
		{issuer: single, subjectPrefix: "system:serviceaccount:", ok: true},
	}
	for _, tc := range tests {
		name := tc.issuer + " " + tc.subjectPrefix + fmtClaims(tc.claims) + " " + tc.condition
		t.Run(name, func(t *testing.T) {
			_, err := e.svc.AddRule(t.Context(), "req", admin, federation.Rule{Issuer: tc.issuer, Audience: aud,
				SubjectPrefix: tc.subjectPrefix, Claims: tc.claims, Condition: tc.condition, ServiceAccount: "ci-deploy", Scopes: []string{"deploy"}})
			switch {
			case tc.ok && err != nil:
				t.Errorf("refused: %v", err)
			case !tc.ok && err == nil:
				t.Error("accepted a rule that does not pin the tenant")
			case !tc.ok && (!isKind(err, apperr.Invalid) || !strings.Contains(err.Error(), "pin the tenant with")):
				t.Errorf("err = %v, want a tenant-pinning refusal", err)
			}
		})
	}
}

func fmtClaims(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func TestAddRuleValidation(t *testing.T) {
	e := rulesEnv(t)
	big := strings.Repeat(`claims.a == "x" && `, 300) + "true"
	many := strings.Repeat(`claims.a == "x" && `, 110) + `claims.b == "y"`
	list := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = "1"
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	costly := list(40) + ".all(x, " + list(40) + ".all(y, " + list(40) + `.exists(z, x + y + z == 0))) || claims.a == "x"`

	valid := federation.Rule{Issuer: single, Audience: aud, SubjectPrefix: "system:serviceaccount:ci:", ServiceAccount: "ci-deploy", Scopes: []string{"deploy"}}
	tests := map[string]struct {
		mod   func(r *federation.Rule)
		admin bool
		kind  apperr.Kind
		msg   string
	}{
		"not admin":           {mod: func(r *federation.Rule) {}, kind: apperr.Forbidden, msg: "only an admin"},
		"unknown issuer":      {mod: func(r *federation.Rule) { r.Issuer = "https://nope.example" }, msg: "is not trusted: add it first"},
		"no audience":         {mod: func(r *federation.Rule) { r.Audience = "" }, msg: "needs an audience"},
		"no condition":        {mod: func(r *federation.Rule) { r.SubjectPrefix = "" }, msg: "at least one condition"},
		"bad claim path":      {mod: func(r *federation.Rule) { r.Claims = map[string]string{"a//b": "x"} }, msg: "not a claim path"},
		"unknown svc":         {mod: func(r *federation.Rule) { r.ServiceAccount = "ghost" }, msg: `no service account "ghost": create it first`},
		"disabled svc":        {mod: func(r *federation.Rule) { r.ServiceAccount = "off" }, msg: "service account off is disabled"},
		"no scopes":           {mod: func(r *federation.Rule) { r.Scopes = nil }, msg: "at least one scope"},
		"scope with space":    {mod: func(r *federation.Rule) { r.Scopes = []string{"a b"} }, msg: "not a valid scope token"},
		"empty scope":         {mod: func(r *federation.Rule) { r.Scopes = []string{""} }, msg: "not a valid scope token"},
		"resource not https":  {mod: func(r *federation.Rule) { r.Resources = []string{"http://api.example"} }, msg: "must be https"},
		"resource relative":   {mod: func(r *federation.Rule) { r.Resources = []string{"/api"} }, msg: "absolute"},
		"resource fragment":   {mod: func(r *federation.Rule) { r.Resources = []string{"https://api.example/#x"} }, msg: "has a fragment"},
		"ttl over max":        {mod: func(r *federation.Rule) { r.TokenTTL = 2 * time.Hour }, msg: "at most 1h"},
		"negative ttl":        {mod: func(r *federation.Rule) { r.TokenTTL = -time.Second }, msg: "positive"},
		"condition true":      {mod: func(r *federation.Rule) { r.Condition = "true" }, msg: "does not depend on the assertion"},
		"condition 1 == 1":    {mod: func(r *federation.Rule) { r.Condition = "1 == 1" }, msg: "does not depend on the assertion"},
		`condition "a"=="a"`:  {mod: func(r *federation.Rule) { r.Condition = `"a" == "a"` }, msg: "does not depend on the assertion"},
		"condition || true":   {mod: func(r *federation.Rule) { r.Condition = `claims.ref == "x" || true` }, msg: "does not depend on the assertion"},
		"condition fold list": {mod: func(r *federation.Rule) { r.Condition = `[1, 2].exists(x, x == 2)` }, msg: "does not depend on the assertion"},
		"condition ternary":   {mod: func(r *federation.Rule) { r.Condition = `1 > 0 ? true : claims.x == "y"` }, msg: "does not depend on the assertion"},
		"condition not bool":  {mod: func(r *federation.Rule) { r.Condition = `claims.ref` }, msg: "it must be a bool"},
		"condition int":       {mod: func(r *federation.Rule) { r.Condition = `size(claims)` }, msg: "of type int"},
		"syntax error":        {mod: func(r *federation.Rule) { r.Condition = `claims.ref ==` }, msg: "does not compile: ERROR: <input>:1:14: Syntax error"},
		"unknown variable":    {mod: func(r *federation.Rule) { r.Condition = `token.ref == "x"` }, msg: "undeclared reference to 'token'"},
		"too large":           {mod: func(r *federation.Rule) { r.Condition = big }, msg: "bytes; keep it under 4096"},
		"too many nodes":      {mod: func(r *federation.Rule) { r.Condition = many }, msg: "expression nodes, more than 500"},
		"too costly":          {mod: func(r *federation.Rule) { r.Condition = costly }, msg: "costs more than the limit"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := valid
			tc.mod(&r)
			by := admin
			if tc.kind == apperr.Forbidden {
				by = notAdm
			}
			want := tc.kind
			if want == 0 {
				want = apperr.Invalid
			}
			_, err := e.svc.AddRule(t.Context(), "req", by, r)
			if !isKind(err, want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v\nwant kind %d containing %q", err, want, tc.msg)
			}
		})
	}
}

func TestRuleLifecycle(t *testing.T) {
	e := rulesEnv(t)
	r, err := e.svc.AddRule(t.Context(), "req_add", admin, federation.Rule{Issuer: single, Audience: aud,
		Condition: `claims["kubernetes.io"].namespace == "ci"`, ServiceAccount: "ci-deploy", Scopes: []string{"deploy", "read"},
		Resources: []string{"https://api.example/v1", "http://127.0.0.1:8080"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.ID, "fr_") || r.ServiceAccount != "svc_ci-deploy" || r.TokenTTL != federation.DefaultTokenTTL || !r.CreatedAt.Equal(start) {
		t.Errorf("added %+v", r)
	}
	got, err := e.svc.GetRule(t.Context(), admin, r.ID)
	if diff := cmp.Diff(r, got); err != nil || diff != "" {
		t.Errorf("GetRule: %v (-added +got):\n%s", err, diff)
	}
	if _, err := e.svc.GetRule(t.Context(), notAdm, r.ID); !isKind(err, apperr.Forbidden) {
		t.Errorf("GetRule by a non-admin: %v", err)
	}
	if _, err := e.svc.GetRule(t.Context(), admin, "fr_nope"); !isKind(err, apperr.NotFound) {
		t.Errorf("GetRule unknown: %v", err)
	}
	other := e.addRule(federation.Rule{Issuer: github, Audience: aud, SubjectPrefix: "repo:acme/"})
	for issuer, want := range map[string][]string{"": {r.ID, other.ID}, single: {r.ID}, github: {other.ID}, gitlab: nil} {
		rules, err := e.svc.ListRules(t.Context(), admin, issuer)
		var ids []string
		for _, r := range rules {
			ids = append(ids, r.ID)
		}
		if diff := cmp.Diff(want, ids); err != nil || diff != "" {
			t.Errorf("ListRules(%q): %v (-want +got):\n%s", issuer, err, diff)
		}
	}
	if _, err := e.svc.ListRules(t.Context(), notAdm, ""); !isKind(err, apperr.Forbidden) {
		t.Errorf("ListRules by a non-admin: %v", err)
	}

	off, err := e.svc.SetRuleDisabled(t.Context(), "req_off", admin, r.ID, true)
	if err != nil || !off.Disabled {
		t.Fatalf("disable: %v %+v", err, off)
	}
	on, err := e.svc.SetRuleDisabled(t.Context(), "req_on", admin, r.ID, false)
	if err != nil || on.Disabled {
		t.Fatalf("enable: %v %+v", err, on)
	}
	if _, err := e.svc.SetRuleDisabled(t.Context(), "req", notAdm, r.ID, true); !isKind(err, apperr.Forbidden) {
		t.Errorf("disable by a non-admin: %v", err)
	}
	if _, err := e.svc.SetRuleDisabled(t.Context(), "req", admin, "fr_nope", true); !isKind(err, apperr.NotFound) {
		t.Errorf("disable unknown: %v", err)
	}
	events := e.store.Events()
	var tail []string
	for _, ev := range events[len(events)-4:] {
		tail = append(tail, ev.Action+" "+ev.RequestID+" "+ev.Target+" "+ev.ActorID)
	}
	want := []string{
		"federation.rule.add req_add " + r.ID + " usr_admin",
		"federation.rule.add req_test " + other.ID + " usr_admin",
		"federation.rule.disable req_off " + r.ID + " usr_admin",
		"federation.rule.enable req_on " + r.ID + " usr_admin",
	}
	if diff := cmp.Diff(want, tail); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}
