package federation_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

// rfc8037Key is the Ed25519 key of RFC 8037 §A.1, whose public half rulesEnv pins as kid "k":
// fixed, so seed assertions signed with it stay valid.
func rfc8037Key(t testing.TB) *oidctest.Key {
	seed, err := base64.RawURLEncoding.DecodeString("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
	if err != nil {
		t.Fatal(err)
	}
	return &oidctest.Key{KID: "k", Alg: "EdDSA", Signer: ed25519.NewKeyFromSeed(seed)}
}

// newMinter mints assertions valid at the test clock's start.
func newMinter(t testing.TB) *oidctest.Issuer {
	return oidctest.New(t, oidctest.WithClock(func() time.Time { return start }))
}

// fuzzClaims are claims of single, valid at the test clock's start, with values of every JSON
// type for conditions to trip over.
func fuzzClaims(minter *oidctest.Issuer, aud string) map[string]any {
	c := minter.Kubernetes(aud, "ci", "deployer")
	c["iss"] = single
	c["groups"] = []any{"dev", "ops"}
	c["admin"] = false
	c["level"] = 3
	c["ratio"] = 0.5
	c["none"] = nil
	return c
}

// matchSeeds are assertions for FuzzMatch: valid ones and near misses.
func matchSeeds(t testing.TB, minter *oidctest.Issuer) []string {
	key := rfc8037Key(t)
	valid := fuzzClaims(minter, aud)
	other := fuzzClaims(minter, "other")
	return []string{
		minter.Mint(valid, oidctest.SignedBy(key)),
		minter.Mint(valid, oidctest.SignedBy(key), oidctest.WithoutKID()),
		minter.Mint(valid, oidctest.SignedBy(key), oidctest.WithHeader("alg", "Ed25519")),
		minter.Mint(other, oidctest.SignedBy(key)),
		minter.Mint(valid, oidctest.Unsigned()),
		minter.Mint(valid, oidctest.WithHMAC("HS256", []byte("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"))),
		minter.Mint(map[string]any{"iss": single, "aud": []any{aud, 1}}, oidctest.SignedBy(key)),
		minter.Mint(map[string]any{"iss": single, "exp": 1e300}, oidctest.SignedBy(key)),
		"eyJhbGciOiJub25lIn0.e30.",
		"..",
		"",
	}
}

// FuzzMatch feeds arbitrary assertions to Match: it never panics, and every error is a
// *Refusal with a reason (the stores here never fail).
func FuzzMatch(f *testing.F) {
	e := rulesEnv(f)
	e.addRule(federation.Rule{Issuer: single, Audience: aud, SubjectPrefix: "system:serviceaccount:",
		Condition: `claims["kubernetes.io"].namespace == "ci" && "ops" in claims.groups`})
	e.addRule(federation.Rule{Issuer: single, Audience: aud, Claims: map[string]string{"kubernetes.io/serviceaccount/name": "deployer", "level": "3"}})
	for _, s := range matchSeeds(f, newMinter(f)) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, assertion string) {
		m, err := e.svc.Match(t.Context(), assertion)
		if err == nil {
			if m.Rule.ID == "" || m.ServiceAccount.ID == "" || m.ExpiresAt.IsZero() {
				t.Fatalf("a match without rule, account or expiry: %+v", m)
			}
			return
		}
		var ref *federation.Refusal
		if !errors.As(err, &ref) || ref.Reason == "" {
			t.Fatalf("Match: %v, want a *Refusal with a reason", err)
		}
	})
}

// FuzzCondition compiles arbitrary CEL through rule validation, on a single-tenant and a
// shared issuer, and runs the accepted ones: nothing panics, refusals are apperr Invalid.
func FuzzCondition(f *testing.F) {
	e := rulesEnv(f)
	minter := newMinter(f)
	assertion := minter.Mint(fuzzClaims(minter, aud), oidctest.SignedBy(rfc8037Key(f)))
	for _, s := range []string{
		`claims.sub == "system:serviceaccount:ci:deployer"`,
		`claims["kubernetes.io"].namespace == "ci" && claims.groups.exists(g, g == "ops")`,
		`claims.repository_owner == "acme" && claims.ref.startsWith("refs/heads/")`,
		`claims.level > 2 && claims.ratio < 1.0 && !claims.admin`,
		`assertion.none == null`,
		`claims.sub.matches("^system:.*$")`,
		`true`,
		`claims.x ==`,
		`[1,2,3].all(x, x > 0) || claims.a == "b"`,
		`claims.sub in ["a", "b"]`,
	} {
		f.Add(s)
	}
	n := 0
	f.Fuzz(func(t *testing.T, condition string) {
		for _, issuer := range []string{single, github} {
			n++
			r, err := e.svc.AddRule(t.Context(), "req", admin, federation.Rule{Issuer: issuer, Audience: fmt.Sprint(aud, n),
				Condition: condition, ServiceAccount: "ci-deploy", Scopes: []string{"deploy"}})
			if err != nil {
				if !isKind(err, apperr.Invalid) {
					t.Fatalf("AddRule: %v, want an Invalid refusal", err)
				}
				continue
			}
			if _, err := e.svc.Test(t.Context(), admin, r.ID, assertion); err != nil {
				t.Fatalf("Test of an accepted condition: %v", err)
			}
		}
	})
}

// The first seeds of FuzzMatch must match, or the fuzzer starts from refusals only.
func TestFuzzMatchSeedsMatch(t *testing.T) {
	e := rulesEnv(t)
	e.addRule(federation.Rule{Issuer: single, Audience: aud, SubjectPrefix: "system:serviceaccount:ci:"})
	seeds := matchSeeds(t, newMinter(t))
	for i, want := range []string{"", "", "", federation.ReasonAudience, federation.ReasonAlg, federation.ReasonAlg} {
		if _, got := e.match(seeds[i]); got != want {
			t.Errorf("seed %d: reason %q, want %q", i, got, want)
		}
	}
}
