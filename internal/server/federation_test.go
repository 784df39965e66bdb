package server_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

// sharedIssuers are the multi-tenant issuers of the docs' examples: their rules must pin a tenant.
var sharedIssuers = map[string]bool{
	"https://token.actions.githubusercontent.com": true,
	"https://gitlab.com":                          true,
	"https://accounts.google.com":                 true,
}

// TestFederationDocExamples runs every example rule of docs/federation.md against a local issuer
// standing in for the platform's (discovery, JWKS, RSA or ES256, keys rotated mid-test): each
// matches its platform's token and refuses one from another repository, namespace, branch,
// account or tenant, with the precise reason in the audit trail.
func TestFederationDocExamples(t *testing.T) {
	ts := newTestServer(t)
	type tokenCase struct {
		name   string
		claims func(is *oidctest.Issuer, aud string) map[string]any
		reason string // "" = matches
	}
	with := func(c map[string]any, kv ...any) map[string]any {
		for i := 0; i < len(kv); i += 2 {
			c[kv[i].(string)] = kv[i+1]
		}
		return c
	}
	cases := map[string][]tokenCase{
		"github-main": {
			{"main of acme/app", func(is *oidctest.Issuer, aud string) map[string]any { return is.GitHubActions(aud, "acme/app", "") }, ""},
			{"another repository", func(is *oidctest.Issuer, aud string) map[string]any { return is.GitHubActions(aud, "acme/other", "") }, "assertion_subject"},
			{"another branch", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.GitHubActions(aud, "acme/app", ""), "ref", "refs/heads/dev", "sub", "repo:acme/app:ref:refs/heads/dev")
			}, "assertion_condition"},
			{"another workflow", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.GitHubActions(aud, "acme/app", ""), "workflow_ref", "acme/app/.github/workflows/lint.yml@refs/heads/main")
			}, "assertion_condition"},
		},
		"github-environment": {
			{"production of acme/app", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.GitHubActions(aud, "acme/app", "production")
			}, ""},
			{"staging", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.GitHubActions(aud, "acme/app", "staging")
			}, "assertion_claim"},
			{"another repository's production", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.GitHubActions(aud, "evil/app", "production")
			}, "assertion_claim"},
		},
		"kubernetes": {
			{"prod/deployer", func(is *oidctest.Issuer, aud string) map[string]any { return is.Kubernetes(aud, "prod", "deployer") }, ""},
			{"another namespace", func(is *oidctest.Issuer, aud string) map[string]any { return is.Kubernetes(aud, "dev", "deployer") }, "assertion_subject"},
			{"another service account", func(is *oidctest.Issuer, aud string) map[string]any { return is.Kubernetes(aud, "prod", "web") }, "assertion_claim"},
		},
		"spiffe": {
			{"ci workload", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("spiffe://example.org/ci/deployer", aud), "aud", []any{aud})
			}, ""},
			{"another workload", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("spiffe://example.org/web/frontend", aud), "aud", []any{aud})
			}, "assertion_subject"},
		},
		"gitlab": {
			{"main of acme/app", func(is *oidctest.Issuer, aud string) map[string]any { return is.GitLab(aud, "acme/app") }, ""},
			{"another project", func(is *oidctest.Issuer, aud string) map[string]any { return is.GitLab(aud, "acme/other") }, "assertion_subject"},
			{"another branch", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.GitLab(aud, "acme/app"), "ref", "main-old", "sub", "project_path:acme/app:ref_type:branch:ref:main-old")
			}, "assertion_claim"},
		},
		"google": {
			{"the deployer account", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("104263573821234567890", aud), "email", "deployer@acme-prod.iam.gserviceaccount.com", "email_verified", true)
			}, ""},
			{"another account", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("117263573821234567891", aud), "email", "deployer@evil-prod.iam.gserviceaccount.com", "email_verified", true)
			}, "assertion_claim"},
		},
		"azure": {
			{"the managed identity", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("4d2e5b7c-0f1a-4c3e-9b8d-6a7f8e9d0c1b", aud), "tid", "8c1f9a52-3e7d-4b1a-9f2e-5d6c7b8a9e01", "oid", "4d2e5b7c-0f1a-4c3e-9b8d-6a7f8e9d0c1b")
			}, ""},
			{"another identity", func(is *oidctest.Issuer, aud string) map[string]any {
				return with(is.Claims("9a9a9a9a-0f1a-4c3e-9b8d-6a7f8e9d0c1b", aud), "tid", "8c1f9a52-3e7d-4b1a-9f2e-5d6c7b8a9e01", "oid", "9a9a9a9a-0f1a-4c3e-9b8d-6a7f8e9d0c1b")
			}, "assertion_condition"},
		},
		"aws": {
			{"the deployer role", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.Claims("arn:aws:iam::123456789012:role/deployer", aud)
			}, ""},
			{"another account's role", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.Claims("arn:aws:iam::999999999999:role/deployer", aud)
			}, "assertion_condition"},
			{"a longer role name", func(is *oidctest.Issuer, aud string) map[string]any {
				return is.Claims("arn:aws:iam::123456789012:role/deployer-old", aud)
			}, "assertion_condition"},
		},
	}

	examples := docExamples(t)
	if len(examples) != len(cases) {
		t.Fatalf("docs/federation.md has %d examples, the test covers %d: keep them in step", len(examples), len(cases))
	}
	svcs := map[string]string{}
	for i, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			tcs, ok := cases[ex.name]
			if !ok {
				t.Fatalf("no token cases for example %s", ex.name)
			}
			alg := []string{"RS256", "ES256"}[i%2]
			is := oidctest.New(t, oidctest.WithAlgs(alg), oidctest.WithClock(ts.Clock.Now))
			ts.trust(t, is, map[string]any{"shared": sharedIssuers[ex.flags["issuer"][0]]})
			name := ex.flags["service-account"][0]
			if svcs[name] == "" {
				svcs[name] = ts.svcAccount(t, name)
			}
			body := map[string]any{"issuer": is.URL, "audience": ex.flags["audience"][0], "service_account": name,
				"scope": strings.Join(ex.flags["scope"], " "), "require_dpop": ex.flags["require-dpop"] != nil}
			if p := ex.flags["subject-prefix"]; p != nil {
				body["subject_prefix"] = p[0]
			}
			if c := ex.flags["condition"]; c != nil {
				body["condition"] = c[0]
			}
			claims := map[string]string{}
			for _, kv := range ex.flags["claim"] {
				k, v, _ := strings.Cut(kv, "=")
				claims[k] = v
			}
			body["claims"] = claims
			ts.rule(t, body)

			var key = (*testAgent)(nil)
			if ex.flags["require-dpop"] != nil {
				k, did := newKey(t)
				key = &testAgent{Key: k, DID: did}
			}
			try := func(tc tokenCase) {
				t.Helper()
				assertion := is.Mint(tc.claims(is, ex.flags["audience"][0]))
				var resp *http.Response
				var out map[string]any
				if key != nil {
					resp, out = ts.jwtBearer(t, assertion, key.Key, nil)
				} else {
					resp, out = ts.jwtBearer(t, assertion, nil, nil)
				}
				if tc.reason == "" {
					if resp.StatusCode != 200 || out["access_token"] == nil {
						t.Fatalf("%s: %d %v, want a token", tc.name, resp.StatusCode, out)
					}
					if sub := claimOf(t, out["access_token"].(string), "sub"); sub != svcs[name] {
						t.Errorf("%s: token sub = %v, want %s", tc.name, sub, svcs[name])
					}
					return
				}
				if resp.StatusCode != 400 || out["error"] != "invalid_grant" {
					t.Fatalf("%s: %d %v, want invalid_grant", tc.name, resp.StatusCode, out)
				}
				evs := ts.auditOf(t, out["request_id"].(string))
				if len(evs) != 1 || evs[0]["reason"] != tc.reason || evs[0]["detail"] == "" {
					t.Errorf("%s: audit = %v, want one event with reason %s", tc.name, evs, tc.reason)
				}
			}
			for _, tc := range tcs {
				try(tc)
			}
			// Rotation mid-test: the issuer replaces its keys; once the rate limit allows a
			// refresh, tokens of the new keys match and the refusals stay the same.
			is.Rotate()
			ts.Clock.Advance(2 * time.Minute)
			for _, tc := range tcs {
				try(tc)
			}
		})
	}
}

// claimOf reads one claim of a JWT without verifying it.
func claimOf(t testing.TB, jwt, name string) any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", jwt)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m[name]
}

// TestFederationRefusals: every refused assertion gets the same invalid_grant with a request id,
// and the audit event of that request says exactly which check failed.
func TestFederationRefusals(t *testing.T) {
	ts := newTestServer(t)
	is := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	ts.trust(t, is, map[string]any{"max_assertion_lifetime": "1h", "require_jti": true})
	svc := ts.svcAccount(t, "ci")
	aud := "https://mandate.example.com"
	ts.rule(t, map[string]any{"issuer": is.URL, "audience": aud, "subject_prefix": "repo:acme/",
		"condition": `claims.ref == "refs/heads/main"`, "service_account": svc, "scope": "deploy:write"})
	other := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	disabledSvc := ts.svcAccount(t, "old-ci")
	ts.rule(t, map[string]any{"issuer": is.URL, "audience": "https://disabled-svc.example", "subject_prefix": "repo:acme/",
		"service_account": disabledSvc, "scope": "deploy:write"})
	if resp, out := ts.adminJSON(t, "POST", "/v1/service-accounts/old-ci/disable", nil); resp.StatusCode != 200 {
		t.Fatalf("disable: %d %v", resp.StatusCode, out)
	}
	disabledRule := ts.rule(t, map[string]any{"issuer": is.URL, "audience": "https://disabled-rule.example", "subject_prefix": "repo:acme/",
		"service_account": svc, "scope": "deploy:write"})
	if resp, out := ts.adminJSON(t, "POST", "/v1/federation/rules/"+disabledRule+"/disable", nil); resp.StatusCode != 200 {
		t.Fatalf("disable rule: %d %v", resp.StatusCode, out)
	}

	good := func() map[string]any { return is.GitHubActions(aud, "acme/app", "") }
	edit := func(kv ...any) map[string]any {
		c := good()
		for i := 0; i < len(kv); i += 2 {
			c[kv[i].(string)] = kv[i+1]
		}
		return c
	}
	now := ts.Clock.Now()
	replayed := is.Mint(good())
	if resp, out := ts.jwtBearer(t, replayed, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("first use: %d %v", resp.StatusCode, out)
	}
	rsaPub, _ := json.Marshal(is.Key("RS256").Public())
	for _, tc := range []struct {
		name, assertion, scope, reason string
	}{
		{"wrong audience", is.Mint(edit("aud", "https://elsewhere.example")), "", "assertion_audience"},
		{"unknown issuer", other.Mint(other.GitHubActions(aud, "acme/app", "")), "", "assertion_unknown_issuer"},
		{"expired", is.Mint(edit("iat", now.Add(-20*time.Minute).Unix(), "nbf", now.Add(-20*time.Minute).Unix(), "exp", now.Add(-10*time.Minute).Unix())), "", "assertion_expired"},
		{"not yet valid", is.Mint(edit("nbf", now.Add(10*time.Minute).Unix(), "exp", now.Add(15*time.Minute).Unix())), "", "assertion_not_yet_valid"},
		{"lifetime over the issuer's max", is.Mint(edit("exp", now.Add(2*time.Hour).Unix())), "", "assertion_lifetime"},
		{"replayed jti", replayed, "", "assertion_jti_replay"},
		{"unknown kid after refresh", is.Mint(good(), oidctest.WithKID("no-such-key")), "", "assertion_unknown_kid"},
		{"alg none", is.Mint(good(), oidctest.Unsigned()), "", "assertion_alg"},
		{"HS256 with the issuer's public key", is.Mint(good(), oidctest.WithHMAC("HS256", rsaPub)), "", "assertion_alg"},
		{"condition false", is.Mint(edit("ref", "refs/heads/dev")), "", "assertion_condition"},
		{"disabled rule", is.Mint(edit("aud", "https://disabled-rule.example")), "", "assertion_rule_disabled"},
		{"disabled service account", is.Mint(edit("aud", "https://disabled-svc.example")), "", "assertion_service_account_disabled"},
		{"scope beyond the rule", is.Mint(good()), "deploy:write admin", "assertion_scope"},
		{"malformed", "not.a.jwt", "", "assertion_malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var extra url.Values
			if tc.scope != "" {
				extra = url.Values{"scope": {tc.scope}}
			}
			resp, out := ts.jwtBearer(t, tc.assertion, nil, extra)
			rid, _ := out["request_id"].(string)
			if resp.StatusCode != 400 || out["error"] != "invalid_grant" || rid == "" ||
				out["error_description"] != "the assertion was refused: an admin can see why with mandate audit --request-id "+rid {
				t.Fatalf("%d %v, want the one generic invalid_grant naming the request id", resp.StatusCode, out)
			}
			evs := ts.auditOf(t, rid)
			if len(evs) != 1 || evs[0]["action"] != "token.deny" || evs[0]["reason"] != tc.reason || evs[0]["detail"] == "" {
				t.Fatalf("audit of %s = %v, want one token.deny with reason %s", rid, evs, tc.reason)
			}
			if d := evs[0]["detail"].(string); strings.Contains(d, tc.assertion) {
				t.Errorf("the audit detail holds the assertion: %s", d)
			}
		})
	}
}

// TestFederationUnknownKID: an unknown kid makes the server refetch the issuer's JWKS once the
// rate limit allows, and is refused when the refreshed set does not have it either.
func TestFederationUnknownKID(t *testing.T) {
	ts := newTestServer(t)
	is := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	ts.trust(t, is, nil)
	ts.svcAccount(t, "ci")
	aud := "https://mandate.example.com"
	ts.rule(t, map[string]any{"issuer": is.URL, "audience": aud, "subject_prefix": "repo:acme/", "service_account": "ci", "scope": "deploy:write"})
	ts.Clock.Advance(2 * time.Minute) // past the refresh window of the fetch made when the issuer was added
	before := is.JWKSFetches()
	for range 20 {
		resp, out := ts.jwtBearer(t, is.Mint(is.GitHubActions(aud, "acme/app", ""), oidctest.WithKID("kid-"+randomID())), nil, nil)
		if resp.StatusCode != 400 || ts.auditOf(t, out["request_id"].(string))[0]["reason"] != "assertion_unknown_kid" {
			t.Fatalf("unknown kid: %d %v", resp.StatusCode, out)
		}
	}
	if got := is.JWKSFetches() - before; got != 1 {
		t.Errorf("20 unknown kids made %d JWKS fetches, want 1 (one refresh per window)", got)
	}
}

// TestFederationCIFlow: a GitHub-shaped token → the service account's token → a grant for
// @deployer → the agent's task token, whose sub is the service account, with the chain visible
// to an independent verifier.
func TestFederationCIFlow(t *testing.T) {
	ts := newTestServer(t)
	rs := newResourceServer(t, ts)
	is := oidctest.New(t, oidctest.WithClock(ts.Clock.Now))
	ts.trust(t, is, nil)
	svc := ts.svcAccount(t, "ci-deploy")
	aud := "https://mandate.example.com"
	ruleID := ts.rule(t, map[string]any{"issuer": is.URL, "audience": aud, "subject_prefix": "repo:acme/app:",
		"service_account": "ci-deploy", "scope": "deploy:write deploy:read", "resources": []string{rs.URL}, "token_ttl": "15m"})

	// 1. The CI job's OIDC token → a service-account token (Bearer: no proof sent).
	resp, out := ts.jwtBearer(t, is.Mint(is.GitHubActions(aud, "acme/app", "")), nil, nil)
	if resp.StatusCode != 200 || out["token_type"] != "Bearer" {
		t.Fatalf("jwt-bearer: %d %v", resp.StatusCode, out)
	}
	svcTok := out["access_token"].(string)
	// min(15m, 2 × the assertion's 5 minutes left, 1h) = 10 minutes.
	if e := out["expires_in"].(float64); e < 590 || e > 600 {
		t.Errorf("expires_in = %v, want about 600 (twice the assertion's remaining 5 minutes)", e)
	}
	asSvc := func(method, path string, body any) (*http.Response, map[string]any) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(string(b)))
		req.Header.Set("Authorization", "Bearer "+svcTok)
		req.Header.Set("Content-Type", "application/json")
		return ts.do(t, req)
	}
	if resp, out := asSvc("GET", "/v1/whoami", nil); resp.StatusCode != 200 || out["id"] != svc || out["service_account"] != true {
		t.Fatalf("whoami as the service account: %d %v", resp.StatusCode, out)
	}

	// A token for a resource server: only one of the rule's, and only DPoP-bound.
	key, _ := newKey(t)
	resp, out = ts.jwtBearer(t, is.Mint(is.GitHubActions(aud, "acme/app", "")), key, url.Values{"resource": {rs.URL}})
	if resp.StatusCode != 200 || out["token_type"] != "DPoP" || claimOf(t, out["access_token"].(string), "aud") != rs.URL {
		t.Errorf("jwt-bearer for the rule's resource: %d %v", resp.StatusCode, out)
	}
	resp, out = ts.jwtBearer(t, is.Mint(is.GitHubActions(aud, "acme/app", "")), key, url.Values{"resource": {"https://elsewhere.example/"}})
	if resp.StatusCode != 400 || ts.auditOf(t, out["request_id"].(string))[0]["reason"] != "assertion_resource" {
		t.Errorf("jwt-bearer for another resource: %d %v, want invalid_grant (assertion_resource)", resp.StatusCode, out)
	}
	if resp, out = ts.jwtBearer(t, is.Mint(is.GitHubActions(aud, "acme/app", "")), nil, url.Values{"resource": {rs.URL}}); resp.StatusCode != 400 || out["error"] != "invalid_request" {
		t.Errorf("jwt-bearer for a resource without a proof: %d %v, want invalid_request", resp.StatusCode, out)
	}

	// 2. The service account claims the agent and grants it part of its authority.
	agent := ts.newAgent(t, "deployer", false)
	if resp, out := ts.claim(t, svcTok, agent.Code); resp.StatusCode != 200 {
		t.Fatalf("claim as the service account: %d %v", resp.StatusCode, out)
	}
	if resp, out := asSvc("POST", "/v1/grants", map[string]any{"agent": "@deployer", "scopes": []string{"admin"}, "resources": []string{rs.URL}}); resp.StatusCode != 403 {
		t.Errorf("a grant beyond the service account's scopes: %d %v, want 403", resp.StatusCode, out)
	}
	resp, out = asSvc("POST", "/v1/grants", map[string]any{"agent": "@deployer", "scopes": []string{"deploy:write"}, "resources": []string{rs.URL}, "max_task_ttl": 600})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("grant as the service account: %d %v", resp.StatusCode, out)
	}
	grantID := out["grant_id"].(string)

	// 3. The agent starts a task under the grant; a third-party resource verifies its token.
	taskTok := ts.startTask(t, agent, ts.grantToken(t, agent, grantID))
	resp, caller := rs.call(t, ts, agent.Key, taskTok)
	if resp.StatusCode != 200 {
		t.Fatalf("resource: %d %v", resp.StatusCode, caller)
	}
	chain, _ := caller["Chain"].([]any)
	if caller["Subject"] != svc || caller["Principal"] != svc || len(chain) != 1 || chain[0].(map[string]any)["AgentID"] != agent.ID || caller["Grant"] != grantID {
		t.Errorf("caller = %v, want sub = principal = %s and the chain [%s]", caller, svc, agent.ID)
	}

	// Disabling the rule stops the service account's token at once.
	if resp, out := ts.adminJSON(t, "POST", "/v1/federation/rules/"+ruleID+"/disable", nil); resp.StatusCode != 200 {
		t.Fatalf("disable rule: %d %v", resp.StatusCode, out)
	}
	if resp, out := asSvc("GET", "/v1/whoami", nil); resp.StatusCode != 401 {
		t.Errorf("whoami after the rule was disabled: %d %v, want 401", resp.StatusCode, out)
	}
}

// TestSPIREWorkload exchanges a real SPIRE JWT-SVID: scripts/spire/run.sh starts spire-server
// and spire-agent (built from the Go module proxy by scripts/spire/build.sh), registers a
// workload and fetches its SVID through the agent's workload API; mandate trusts the SPIRE
// trust bundle (JWKS form) and issues a DPoP-bound token. .ci/run sets MANDATE_TEST_SPIRE=1.
func TestSPIREWorkload(t *testing.T) {
	if os.Getenv("MANDATE_TEST_SPIRE") == "" {
		t.Skip("MANDATE_TEST_SPIRE is not set: skipping the real SPIRE test (set it to 1; the first run builds SPIRE, about 6 minutes)")
	}
	ts := newTestServer(t)
	out := t.TempDir()
	cmd := exec.Command("../../scripts/spire/run.sh", ts.URL, out)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/spire/run.sh: %v", err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	svid, bundle, spiffeID := read("svid.jwt"), read("bundle.jwks"), read("spiffe_id.txt")
	if resp, o := ts.adminJSON(t, "POST", "/v1/federation/issuers", map[string]any{
		"issuer": "https://spire.example.org", "jwks": json.RawMessage(bundle), "max_assertion_lifetime": "10m"}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("trust the SPIRE bundle: %d %v", resp.StatusCode, o)
	}
	svc := ts.svcAccount(t, "spiffe-ci")
	ts.rule(t, map[string]any{"issuer": "https://spire.example.org", "audience": ts.URL, "subject_prefix": "spiffe://example.org/ci/",
		"service_account": "spiffe-ci", "scope": "deploy:write", "require_dpop": true})

	if resp, o := ts.jwtBearer(t, svid, nil, nil); resp.StatusCode != 400 || o["error"] != "invalid_grant" {
		t.Errorf("without a proof (the rule requires DPoP): %d %v, want invalid_grant", resp.StatusCode, o)
	}
	key, _ := newKey(t)
	resp, o := ts.jwtBearer(t, svid, key, nil)
	if resp.StatusCode != 200 || o["token_type"] != "DPoP" {
		t.Fatalf("exchange the SVID of %s: %d %v", spiffeID, resp.StatusCode, o)
	}
	tok := o["access_token"].(string)
	cnf, _ := claimOf(t, tok, "cnf").(map[string]any)
	if claimOf(t, tok, "sub") != svc || cnf["jkt"] == "" {
		t.Errorf("token sub = %v, cnf = %v; want %s, bound to the proof key", claimOf(t, tok, "sub"), cnf, svc)
	}
}
