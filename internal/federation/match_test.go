package federation_test

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

const aud = "https://mandate.test"

// matchEnv is a single-tenant discovery issuer with single-use jtis and a 10 minute maximum
// lifetime, and rules:
//   - aud:        sub prefix repo:acme/ and condition ref == refs/heads/main → ci-deploy
//   - aud-claims: exact claims (a nested one) → ci-deploy
//   - aud-off:    disabled
//   - aud-svc:    acts as svc "paused", disabled after the rule was added
func matchEnv(t *testing.T) (*env, *oidctest.Issuer, map[string]federation.Rule) {
	e := newEnv(t)
	iss := e.newIssuer()
	e.addIssuer(federation.Issuer{URL: iss.URL, RequireJTI: true, MaxAssertionLifetime: 10 * time.Minute})
	rules := map[string]federation.Rule{
		"main": e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, SubjectPrefix: "repo:acme/",
			Condition: `claims.ref == "refs/heads/main"`}),
		"claims": e.addRule(federation.Rule{Issuer: iss.URL, Audience: "aud-claims",
			Claims: map[string]string{"kubernetes.io/namespace": "prod", "kubernetes.io/serviceaccount/name": "api"}}),
		"off": e.addRule(federation.Rule{Issuer: iss.URL, Audience: "aud-off", SubjectPrefix: "repo:acme/"}),
	}
	e.accounts.add("paused")
	rules["svc"] = e.addRule(federation.Rule{Issuer: iss.URL, Audience: "aud-svc", SubjectPrefix: "repo:acme/", ServiceAccount: "paused"})
	e.accounts.setDisabled("paused", true)
	if _, err := e.svc.SetRuleDisabled(t.Context(), "req", admin, rules["off"].ID, true); err != nil {
		t.Fatal(err)
	}
	return e, iss, rules
}

func TestMatchRefusals(t *testing.T) {
	e, iss, _ := matchEnv(t)
	gh := func(mod func(c map[string]any)) map[string]any {
		c := iss.GitHubActions(aud, "acme/app", "")
		if mod != nil {
			mod(c)
		}
		return c
	}
	now := e.clock.Now()
	rsa := iss.Key("RS256")
	der, err := x509.MarshalPKIXPublicKey(rsa.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	publicPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	foreign := oidctest.NewKey(t, "RS256")

	tests := map[string]struct {
		assertion string
		reason    string
	}{
		"not a JWS":             {"not-a-jwt", federation.ReasonMalformed},
		"empty":                 {"", federation.ReasonMalformed},
		"garbage parts":         {"a.b.c", federation.ReasonMalformed},
		"padding":               {iss.Mint(gh(nil)) + "=", federation.ReasonMalformed},
		"too large":             {iss.Mint(gh(func(c map[string]any) { c["pad"] = string(make([]byte, 20000)) })), federation.ReasonMalformed},
		"crit header":           {iss.Mint(gh(nil), oidctest.WithHeader("crit", []string{"exp"})), federation.ReasonMalformed},
		"exp not a number":      {iss.Mint(gh(func(c map[string]any) { c["exp"] = "soon" })), federation.ReasonMalformed},
		"unknown issuer":        {iss.Mint(gh(func(c map[string]any) { c["iss"] = "https://evil.example" })), federation.ReasonUnknownIssuer},
		"no issuer":             {iss.Mint(gh(func(c map[string]any) { delete(c, "iss") })), federation.ReasonUnknownIssuer},
		"alg none":              {iss.Mint(gh(nil), oidctest.Unsigned()), federation.ReasonAlg},
		"HS256 with public key": {iss.Mint(gh(nil), oidctest.WithHMAC("HS256", publicPEM), oidctest.WithKID(rsa.KID)), federation.ReasonAlg},
		"HS256 with JWKS bytes": {iss.Mint(gh(nil), oidctest.WithHMAC("HS256", iss.JWKS())), federation.ReasonAlg},
		"ES256 header on RSA key": {
			iss.Mint(gh(nil), oidctest.SignedBy(iss.Key("ES256")), oidctest.WithKID(rsa.KID)), federation.ReasonAlg},
		"unknown kid":        {iss.Mint(gh(nil), oidctest.WithKID("no-such-key")), federation.ReasonUnknownKID},
		"foreign key":        {iss.Mint(gh(nil), oidctest.SignedBy(foreign), oidctest.WithKID(rsa.KID)), federation.ReasonSignature},
		"foreign key no kid": {iss.Mint(gh(nil), oidctest.SignedBy(foreign), oidctest.WithoutKID()), federation.ReasonSignature},
		"wrong audience":     {iss.Mint(gh(func(c map[string]any) { c["aud"] = "https://other.example" })), federation.ReasonAudience},
		"no audience":        {iss.Mint(gh(func(c map[string]any) { delete(c, "aud") })), federation.ReasonAudience},
		"expired": {iss.Mint(gh(func(c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-5*time.Minute).Unix(), now.Add(-5*time.Minute).Unix(), now.Add(-2*time.Minute).Unix()
		})), federation.ReasonExpired},
		"no exp": {iss.Mint(gh(func(c map[string]any) { delete(c, "exp") })), federation.ReasonExpired},
		"not yet valid": {iss.Mint(gh(func(c map[string]any) {
			c["nbf"], c["exp"] = now.Add(5*time.Minute).Unix(), now.Add(6*time.Minute).Unix()
		})), federation.ReasonNotYetValid},
		"issued in future": {iss.Mint(gh(func(c map[string]any) {
			c["iat"], c["exp"] = now.Add(5*time.Minute).Unix(), now.Add(6*time.Minute).Unix()
		})), federation.ReasonIssuedInFuture},
		"lifetime over max": {iss.Mint(gh(func(c map[string]any) { c["exp"] = now.Add(11 * time.Minute).Unix() })), federation.ReasonLifetime},
		"lifetime from nbf": {iss.Mint(gh(func(c map[string]any) {
			delete(c, "iat")
			c["nbf"], c["exp"] = now.Add(-9*time.Minute).Unix(), now.Add(2*time.Minute).Unix()
		})), federation.ReasonLifetime},
		"lifetime from now": {iss.Mint(gh(func(c map[string]any) {
			delete(c, "iat")
			delete(c, "nbf")
			c["exp"] = now.Add(11 * time.Minute).Unix()
		})), federation.ReasonLifetime},
		"jti missing":   {iss.Mint(gh(func(c map[string]any) { delete(c, "jti") })), federation.ReasonJTIMissing},
		"subject":       {iss.Mint(gh(func(c map[string]any) { c["sub"] = "repo:evil/app:ref:refs/heads/main" })), federation.ReasonSubject},
		"condition":     {iss.Mint(gh(func(c map[string]any) { c["ref"] = "refs/heads/dev" })), federation.ReasonCondition},
		"condition err": {iss.Mint(gh(func(c map[string]any) { delete(c, "ref") })), federation.ReasonCondition},
		"claim":         {iss.Mint(iss.Kubernetes("aud-claims", "dev", "api")), federation.ReasonClaim},
		"claim absent": {iss.Mint(func() map[string]any {
			c := iss.Kubernetes("aud-claims", "prod", "api")
			delete(c, "kubernetes.io")
			return c
		}()), federation.ReasonClaim},
		"disabled rule":            {iss.Mint(gh(func(c map[string]any) { c["aud"] = "aud-off" })), federation.ReasonRuleDisabled},
		"disabled service account": {iss.Mint(gh(func(c map[string]any) { c["aud"] = "aud-svc" })), federation.ReasonServiceAccountDisabled},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, reason := e.match(tc.assertion)
			if reason != tc.reason {
				t.Errorf("reason = %q, want %q", reason, tc.reason)
			}
		})
	}
}

func TestMatchRefusalDetail(t *testing.T) {
	e, iss, _ := matchEnv(t)
	c := iss.GitHubActions("https://other.example", "acme/app", "")
	c["aud"] = []any{"https://other.example", "second"}
	_, err := e.svc.Match(t.Context(), iss.Mint(c))
	ref, ok := err.(*federation.Refusal)
	if !ok {
		t.Fatalf("Match: %v, want a *Refusal", err)
	}
	want := `aud ["https://other.example" "second"] names no audience of a rule of issuer ` + iss.URL
	if ref.Detail != want {
		t.Errorf("Detail = %q\nwant     %q", ref.Detail, want)
	}
}

func TestMatchSuccess(t *testing.T) {
	e, iss, rules := matchEnv(t)
	for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "Ed25519"} {
		t.Run(alg, func(t *testing.T) {
			iss.Key(alg) // in the JWKS before the issuer is asked again
			e.clock.Advance(2 * time.Minute)
			claims := iss.GitHubActions(aud, "acme/app", "")
			m, reason := e.match(iss.Mint(claims, oidctest.WithAlg(alg)))
			if reason != "" {
				t.Fatalf("refused: %s", reason)
			}
			if m.Rule.ID != rules["main"].ID || m.ServiceAccount.Name != "ci-deploy" || m.Issuer.URL != iss.URL {
				t.Errorf("matched rule %s as %s of %s", m.Rule.ID, m.ServiceAccount.Name, m.Issuer.URL)
			}
			if m.Subject != claims["sub"] || m.JTI != claims["jti"] || m.Claims["repository"] != "acme/app" {
				t.Errorf("Subject %q JTI %q repository %v", m.Subject, m.JTI, m.Claims["repository"])
			}
			if !m.ExpiresAt.Equal(time.Unix(claims["exp"].(int64), 0)) || !m.IssuedAt.Equal(e.clock.Now()) {
				t.Errorf("ExpiresAt %v IssuedAt %v", m.ExpiresAt, m.IssuedAt)
			}
		})
	}
	t.Run("no kid", func(t *testing.T) {
		_, reason := e.match(iss.Mint(iss.GitHubActions(aud, "acme/app", ""), oidctest.WithAlg("ES256"), oidctest.WithoutKID()))
		if reason != "" {
			t.Fatalf("refused: %s", reason)
		}
	})
	t.Run("nested claims", func(t *testing.T) {
		m, reason := e.match(iss.Mint(iss.Kubernetes("aud-claims", "prod", "api")))
		if reason != "" || m.Rule.ID != rules["claims"].ID {
			t.Fatalf("reason %q rule %s", reason, m.Rule.ID)
		}
	})
	t.Run("audience in array, clock skew", func(t *testing.T) {
		c := iss.GitHubActions(aud, "acme/app", "")
		c["aud"] = []any{"other", aud}
		c["iat"] = e.clock.Now().Add(30 * time.Second).Unix()
		c["exp"] = e.clock.Now().Add(-30 * time.Second).Unix()
		c["nbf"] = e.clock.Now().Add(-time.Minute).Unix()
		if _, reason := e.match(iss.Mint(c)); reason != "" {
			t.Fatalf("refused: %s", reason)
		}
	})
}

// The first enabled rule whose conditions pass wins, in creation order.
func TestMatchFirstRuleWins(t *testing.T) {
	e := newEnv(t)
	iss := e.newIssuer()
	e.addIssuer(federation.Issuer{URL: iss.URL})
	e.accounts.add("prod")
	e.accounts.add("any")
	strict := e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, ServiceAccount: "prod",
		Claims: map[string]string{"environment": "production"}})
	loose := e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, ServiceAccount: "any", SubjectPrefix: "repo:acme/"})

	m, reason := e.match(iss.Mint(iss.GitHubActions(aud, "acme/app", "production")))
	if reason != "" || m.Rule.ID != strict.ID || m.ServiceAccount.Name != "prod" {
		t.Errorf("production: reason %q rule %s", reason, m.Rule.ID)
	}
	m, reason = e.match(iss.Mint(iss.GitHubActions(aud, "acme/app", "")))
	if reason != "" || m.Rule.ID != loose.ID {
		t.Errorf("no environment: reason %q rule %s", reason, m.Rule.ID)
	}
	// No rule matches: the refusal is the first candidate's first failing check.
	if _, reason = e.match(iss.Mint(iss.GitHubActions(aud, "evil/app", ""))); reason != federation.ReasonClaim {
		t.Errorf("evil: reason %q, want claim", reason)
	}
}

func TestMatchNoRule(t *testing.T) {
	e := newEnv(t)
	iss := e.newIssuer()
	e.addIssuer(federation.Issuer{URL: iss.URL})
	if _, reason := e.match(iss.Mint(iss.Claims("x", aud))); reason != federation.ReasonNoRule {
		t.Errorf("reason %q, want no_rule", reason)
	}
}
