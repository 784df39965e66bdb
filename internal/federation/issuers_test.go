package federation_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/federation"
	"github.com/mandate-dev/mandate/internal/federation/oidctest"
)

func TestAddIssuerRefusals(t *testing.T) {
	e := newEnv(t)
	good := e.newIssuer()
	liar := e.newIssuer(oidctest.WithDiscoveryIssuer("https://token.actions.githubusercontent.com"))
	down := httptest.NewServer(nil)
	down.Close()
	noKeys := `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`
	// serve answers discovery with body, where ISS stands for the server's URL.
	serve := func(body string) string {
		var srv *httptest.Server
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(strings.ReplaceAll(body, "ISS", srv.URL)))
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	notJSON := serve(`<html>`)
	noJWKSURI := serve(`{"issuer":"ISS"}`)
	plainJWKSURI := serve(`{"issuer":"ISS","jwks_uri":"http://keys.example/jwks"}`)
	emptyJWKS := serve(`{"issuer":"ISS","jwks_uri":"ISS/.well-known/openid-configuration"}`)

	tests := map[string]struct {
		by   bool // admin
		is   federation.Issuer
		kind apperr.Kind
		msg  string
	}{
		"not admin":           {is: federation.Issuer{URL: good.URL}, kind: apperr.Forbidden, msg: "only an admin"},
		"http not loopback":   {by: true, is: federation.Issuer{URL: "http://issuer.example"}, kind: apperr.Invalid, msg: "must be https"},
		"query":               {by: true, is: federation.Issuer{URL: "https://issuer.example?x=1"}, kind: apperr.Invalid, msg: "query or fragment"},
		"fragment":            {by: true, is: federation.Issuer{URL: "https://issuer.example#x"}, kind: apperr.Invalid, msg: "query or fragment"},
		"no host":             {by: true, is: federation.Issuer{URL: "https://"}, kind: apperr.Invalid, msg: "with a host"},
		"lifetime over a day": {by: true, is: federation.Issuer{URL: good.URL, MaxAssertionLifetime: 25 * time.Hour}, kind: apperr.Invalid, msg: "at most 24h"},
		"negative lifetime":   {by: true, is: federation.Issuer{URL: good.URL, MaxAssertionLifetime: -time.Second}, kind: apperr.Invalid, msg: "positive"},
		"discovery names another issuer": {by: true, is: federation.Issuer{URL: liar.URL}, kind: apperr.Invalid,
			msg: `names issuer "https://token.actions.githubusercontent.com"`},
		"unreachable":        {by: true, is: federation.Issuer{URL: down.URL}, kind: apperr.Invalid, msg: "OIDC discovery of " + down.URL + " failed"},
		"discovery not JSON": {by: true, is: federation.Issuer{URL: notJSON}, kind: apperr.Invalid, msg: "is not a JSON object"},
		"no jwks_uri":        {by: true, is: federation.Issuer{URL: noJWKSURI}, kind: apperr.Invalid, msg: "has no jwks_uri"},
		"jwks_uri not https": {by: true, is: federation.Issuer{URL: plainJWKSURI}, kind: apperr.Invalid, msg: `jwks_uri "http://keys.example/jwks": must be https`},
		"JWKS without keys":  {by: true, is: federation.Issuer{URL: emptyJWKS}, kind: apperr.Invalid, msg: "not a JWK set: no keys member"},
		"trailing slash":     {by: true, is: federation.Issuer{URL: good.URL + "/"}, kind: apperr.Invalid, msg: "names issuer"},
		"pinned not JWKS":    {by: true, is: federation.Issuer{URL: "https://a.example", JWKS: []byte(`[1]`)}, kind: apperr.Invalid, msg: "not a JWK set"},
		"pinned no keys":     {by: true, is: federation.Issuer{URL: "https://a.example", JWKS: []byte(`{"keys":[]}`)}, kind: apperr.Invalid, msg: "no usable public signing key"},
		"pinned symmetric":   {by: true, is: federation.Issuer{URL: "https://a.example", JWKS: []byte(noKeys)}, kind: apperr.Invalid, msg: "no usable public signing key"},
		"pinned empty bytes": {by: true, is: federation.Issuer{URL: "https://a.example", JWKS: []byte{}}, kind: apperr.Invalid, msg: "not a JWK set"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			by := notAdm
			if tc.by {
				by = admin
			}
			_, err := e.svc.AddIssuer(t.Context(), "req", by, tc.is)
			if kind, ok := kindOf(err); !ok || kind != tc.kind || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v, want kind %d containing %q", err, tc.kind, tc.msg)
			}
		})
	}
	if n := len(e.store.Events()); n != 0 {
		t.Errorf("%d events recorded for refused additions", n)
	}
}

func TestIssuerLifecycle(t *testing.T) {
	e := newEnv(t)
	iss := e.newIssuer()
	added := e.addIssuer(federation.Issuer{URL: iss.URL, RequireJTI: true})
	want := federation.Issuer{URL: iss.URL, MaxAssertionLifetime: federation.DefaultMaxAssertionLifetime, RequireJTI: true, CreatedAt: start.UTC()}
	if diff := cmp.Diff(want, added); diff != "" {
		t.Errorf("AddIssuer (-want +got):\n%s", diff)
	}
	if _, err := e.svc.AddIssuer(t.Context(), "req", admin, federation.Issuer{URL: iss.URL}); !isKind(err, apperr.Conflict) {
		t.Errorf("adding twice: %v, want Conflict", err)
	}
	// A known multi-tenant issuer is marked shared whatever the request says.
	gh := e.addIssuer(federation.Issuer{URL: "https://token.actions.githubusercontent.com", JWKS: iss.JWKS()})
	if !gh.Shared {
		t.Error("GitHub Actions is not marked shared")
	}
	e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, SubjectPrefix: "ci:"})

	list, err := e.svc.ListIssuers(t.Context(), admin)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListIssuers: %d, %v", len(list), err)
	}
	if _, err := e.svc.ListIssuers(t.Context(), notAdm); !isKind(err, apperr.Forbidden) {
		t.Errorf("ListIssuers by a non-admin: %v", err)
	}
	if err := e.svc.RemoveIssuer(t.Context(), "req_rm", notAdm, iss.URL); !isKind(err, apperr.Forbidden) {
		t.Errorf("RemoveIssuer by a non-admin: %v", err)
	}
	if err := e.svc.RemoveIssuer(t.Context(), "req_rm", admin, iss.URL); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RemoveIssuer(t.Context(), "req_rm", admin, iss.URL); !isKind(err, apperr.NotFound) {
		t.Errorf("removing twice: %v, want NotFound", err)
	}
	if rules, _ := e.svc.ListRules(t.Context(), admin, ""); len(rules) != 0 {
		t.Errorf("%d rules left after removing their issuer", len(rules))
	}
	e.wantReason(iss.Mint(iss.Claims("ci:1", aud)), federation.ReasonUnknownIssuer)

	// Added again: its keys are fetched again, not taken from the old cache.
	iss.Rotate()
	e.addIssuer(federation.Issuer{URL: iss.URL})
	e.addRule(federation.Rule{Issuer: iss.URL, Audience: aud, SubjectPrefix: "ci:"})
	e.wantReason(iss.Mint(iss.Claims("ci:1", aud)), "")

	var got []string
	for _, ev := range e.store.Events() {
		if ev.ActorType != audit.ActorUser || ev.ActorID != admin.ID || ev.PrincipalID != admin.ID || ev.Time.IsZero() {
			t.Errorf("event %s: actor %s %s principal %s", ev.Action, ev.ActorType, ev.ActorID, ev.PrincipalID)
		}
		got = append(got, ev.Action+" "+ev.RequestID+" "+strings.Replace(ev.Target, iss.URL, "ISS", 1))
	}
	wantEvents := []string{
		"federation.issuer.add req_test ISS",
		"federation.issuer.add req_test https://token.actions.githubusercontent.com",
		"federation.rule.add req_test fr_",
		"federation.issuer.remove req_rm ISS",
		"federation.issuer.add req_test ISS",
		"federation.rule.add req_test fr_",
	}
	for i := range got {
		if strings.HasPrefix(got[i], "federation.rule.add") {
			got[i] = got[i][:len("federation.rule.add req_test fr_")]
		}
	}
	if diff := cmp.Diff(wantEvents, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func isKind(err error, kind apperr.Kind) bool {
	k, ok := kindOf(err)
	return ok && k == kind
}
