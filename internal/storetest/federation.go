package storetest

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/ids"
	"github.com/mandate-dev/mandate/internal/principal"
)

func mustCreateServiceAccount(t *testing.T, s Store, name, ownerID string) principal.ServiceAccount {
	t.Helper()
	a := principal.ServiceAccount{ID: ids.New("svc"), Name: name, OwnerID: ownerID, Description: "deploys <" + name + ">", CreatedAt: base}
	if err := s.CreateServiceAccount(t.Context(), a, newEvent(audit.ActionServiceAccountCreate)); err != nil {
		t.Fatalf("CreateServiceAccount(%s): %v", name, err)
	}
	return a
}

// Service accounts are principals: they share names with users, own agents, and are never
// users (no API token, not listed or counted as one).
func testServiceAccounts(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	ci := mustCreateServiceAccount(t, s, "ci-deploy", alice.ID)
	for _, ref := range []string{ci.ID, ci.Name} {
		got, err := s.GetServiceAccount(ctx, ref)
		if err != nil || !cmp.Equal(got, ci) {
			t.Errorf("GetServiceAccount(%s) = %+v, %v; want %+v", ref, got, err, ci)
		}
	}
	if _, err := s.GetUser(ctx, ci.ID); err == nil {
		t.Error("GetUser found a service account")
	}
	if _, err := s.GetServiceAccount(ctx, alice.ID); err == nil {
		t.Error("GetServiceAccount found a user")
	}
	if n, _ := s.CountUsers(ctx); n != 1 {
		t.Errorf("CountUsers = %d, want 1 (service accounts are not users)", n)
	}
	if us, _ := s.ListUsers(ctx); len(us) != 1 {
		t.Errorf("ListUsers = %d users, want 1", len(us))
	}
	b := mustCreateServiceAccount(t, s, "a-batch", alice.ID)
	list, err := s.ListServiceAccounts(ctx)
	if err != nil || len(list) != 2 || list[0].ID != b.ID || list[1].ID != ci.ID {
		t.Errorf("ListServiceAccounts = %+v, %v; want a-batch, ci-deploy", list, err)
	}

	ev := newEvent(audit.ActionServiceAccountDisable)
	if err := s.SetServiceAccountDisabled(ctx, ci.ID, true, ev); err != nil {
		t.Fatalf("SetServiceAccountDisabled: %v", err)
	}
	ev.Target = ci.ID
	wantLastEvent(t, s, success(ev))
	if got, _ := s.GetServiceAccount(ctx, ci.ID); !got.Disabled {
		t.Error("disabled service account reads back enabled")
	}

	// A service account owns agents like a user does.
	_, code := mustCreateAgent(t, s, "deployer")
	if a := mustClaim(t, s, code, ci.ID); a.OwnerID != ci.ID {
		t.Errorf("agent owner = %s, want %s", a.OwnerID, ci.ID)
	}

	before := eventCount(t, s)
	err = s.CreateServiceAccount(ctx, principal.ServiceAccount{ID: ids.New("svc"), Name: "alice", OwnerID: alice.ID, CreatedAt: base}, newEvent(audit.ActionServiceAccountCreate))
	wantErr(t, "CreateServiceAccount with a user's name", err, principal.ErrNameTaken)
	err = s.CreateServiceAccount(ctx, principal.ServiceAccount{ID: ids.New("svc"), Name: "orphan", OwnerID: "usr_nobody", CreatedAt: base}, newEvent(audit.ActionServiceAccountCreate))
	wantErr(t, "CreateServiceAccount with an unknown owner", err, principal.ErrNotFound)
	err = s.SetServiceAccountDisabled(ctx, alice.ID, true, newEvent(audit.ActionServiceAccountDisable))
	wantErr(t, "SetServiceAccountDisabled on a user", err, principal.ErrNotFound)
	wantNoNewEvents(t, s, before)
}

func testFederation(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	ci := mustCreateServiceAccount(t, s, "ci", alice.ID)
	gh := federation.Issuer{URL: "https://token.actions.githubusercontent.com", MaxAssertionLifetime: time.Hour, Shared: true, CreatedAt: base}
	spire := federation.Issuer{URL: "https://spire.example.org", JWKS: []byte(`{"keys":[]}`), MaxAssertionLifetime: 5 * time.Minute, RequireJTI: true, CreatedAt: base}
	for _, is := range []federation.Issuer{gh, spire} {
		ev := newEvent(federation.ActionIssuerAdd)
		if err := s.CreateIssuer(ctx, is, ev); err != nil {
			t.Fatalf("CreateIssuer: %v", err)
		}
		ev.Target = is.URL
		wantLastEvent(t, s, success(ev))
		if got, err := s.GetIssuer(ctx, is.URL); err != nil || !cmp.Equal(got, is) {
			t.Errorf("GetIssuer = %+v, %v; want %+v", got, err, is)
		}
	}
	if list, err := s.ListIssuers(ctx); err != nil || len(list) != 2 || list[0].URL != spire.URL {
		t.Errorf("ListIssuers = %+v, %v", list, err)
	}

	r1 := federation.Rule{ID: ids.New("fr"), Issuer: gh.URL, Audience: "https://mandate.example", SubjectPrefix: "repo:acme/",
		Claims: map[string]string{"ref": "refs/heads/main", "kubernetes.io/namespace": "prod"}, Condition: `claims.environment == "production"`,
		ServiceAccount: ci.ID, Scopes: []string{"deploy:write", "grants:write"}, Resources: []string{"https://api.example/"},
		TokenTTL: 10 * time.Minute, RequireDPoP: true, CreatedAt: base}
	r2 := federation.Rule{ID: ids.New("fr"), Issuer: spire.URL, Audience: "mandate", SubjectPrefix: "spiffe://example.org/",
		ServiceAccount: ci.ID, Scopes: []string{"read"}, TokenTTL: time.Minute, CreatedAt: at(time.Second)}
	r3 := federation.Rule{ID: ids.New("fr"), Issuer: gh.URL, Audience: "other", Claims: map[string]string{"repository_owner": "acme"},
		ServiceAccount: ci.ID, Scopes: []string{"x"}, CreatedAt: at(2 * time.Second)}
	for _, r := range []federation.Rule{r1, r2, r3} {
		ev := newEvent(federation.ActionRuleAdd)
		if err := s.CreateRule(ctx, r, ev); err != nil {
			t.Fatalf("CreateRule: %v", err)
		}
		ev.Target = r.ID
		wantLastEvent(t, s, success(ev))
		if got, err := s.GetRule(ctx, r.ID); err != nil || !cmp.Equal(got, r) {
			t.Errorf("GetRule:\n%s", cmp.Diff(r, got))
		}
	}
	ids := func(rs []federation.Rule) (out []string) {
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	if got, err := s.ListRules(ctx, gh.URL); err != nil || !cmp.Equal(ids(got), []string{r1.ID, r3.ID}) {
		t.Errorf("ListRules(github) = %v, %v; want oldest first", ids(got), err)
	}
	if got, _ := s.ListRules(ctx, ""); len(got) != 3 {
		t.Errorf("ListRules(all) = %d rules, want 3", len(got))
	}

	ev := newEvent(federation.ActionRuleDisable)
	if err := s.SetRuleDisabled(ctx, r1.ID, true, ev); err != nil {
		t.Fatalf("SetRuleDisabled: %v", err)
	}
	if got, _ := s.GetRule(ctx, r1.ID); !got.Disabled {
		t.Error("disabled rule reads back enabled")
	}

	ev = newEvent(federation.ActionIssuerRemove)
	if err := s.RemoveIssuer(ctx, gh.URL, ev); err != nil {
		t.Fatalf("RemoveIssuer: %v", err)
	}
	ev.Target = gh.URL
	wantLastEvent(t, s, success(ev))
	if got, _ := s.ListRules(ctx, ""); len(got) != 1 || got[0].ID != r2.ID {
		t.Errorf("rules after removing their issuer = %v, want only the other issuer's", ids(got))
	}
	_, err := s.GetIssuer(ctx, gh.URL)
	wantErr(t, "GetIssuer after remove", err, federation.ErrNotFound)
}

func testFederationErrors(t *testing.T, s Store) {
	ctx := t.Context()
	alice := mustCreateUser(t, s, "alice")
	ci := mustCreateServiceAccount(t, s, "ci", alice.ID)
	is := federation.Issuer{URL: "https://k8s.example", MaxAssertionLifetime: time.Hour, CreatedAt: base}
	if err := s.CreateIssuer(ctx, is, newEvent(federation.ActionIssuerAdd)); err != nil {
		t.Fatal(err)
	}
	before := eventCount(t, s)
	wantErr(t, "CreateIssuer twice", s.CreateIssuer(ctx, is, newEvent(federation.ActionIssuerAdd)), federation.ErrExists)
	rule := func(issuer, svc string) federation.Rule {
		return federation.Rule{ID: ids.New("fr"), Issuer: issuer, Audience: "a", SubjectPrefix: "system:", ServiceAccount: svc, Scopes: []string{"s"}, CreatedAt: base}
	}
	wantErr(t, "CreateRule for an unknown issuer", s.CreateRule(ctx, rule("https://nope.example", ci.ID), newEvent(federation.ActionRuleAdd)), federation.ErrNotFound)
	wantErr(t, "CreateRule for an unknown service account", s.CreateRule(ctx, rule(is.URL, "svc_nobody"), newEvent(federation.ActionRuleAdd)), federation.ErrNotFound)
	wantErr(t, "SetRuleDisabled on an unknown rule", s.SetRuleDisabled(ctx, "fr_nope", true, newEvent(federation.ActionRuleDisable)), federation.ErrNotFound)
	wantErr(t, "RemoveIssuer unknown", s.RemoveIssuer(ctx, "https://nope.example", newEvent(federation.ActionIssuerRemove)), federation.ErrNotFound)
	_, err := s.GetRule(ctx, "fr_nope")
	wantErr(t, "GetRule unknown", err, federation.ErrNotFound)
	wantNoNewEvents(t, s, before)
}
