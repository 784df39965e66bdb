package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/internal/vault"
)

// The vault events the suite writes; the store records them as they are.
const (
	actionUpstreamCreate = vault.ActionUpstreamCreate
	actionUpstreamUpdate = vault.ActionUpstreamUpdate
	actionUpstreamDelete = vault.ActionUpstreamDelete
	actionSecretSet      = vault.ActionSecretSet
)

// newUpstream returns an upstream with every field set.
func newUpstream(name string, created time.Time) vault.Upstream {
	return vault.Upstream{
		Name:    name,
		BaseURL: "https://api." + name + ".example/v3",
		Auth:    vault.AuthOAuth2Refresh,
		Param:   "",
		OAuth2: &vault.OAuth2{AuthURL: "https://auth.example/authorize", TokenURL: "https://auth.example/token",
			ClientID: "client-<&\"'>", Scopes: []string{"read", "write"}},
		AllowPrivate:      true,
		IdentityAssertion: true,
		Routes: []vault.Route{
			{Scope: name + ":read", Methods: []string{"GET", "HEAD"}, Paths: []string{"/site-explorer/*", "/keywords/**"}},
			{Scope: name + ":send", Methods: []string{"POST"}, Paths: []string{"/emails"},
				Body: []vault.BodyRule{{Detail: "recipient_domains", Pointer: "/to", Match: "email_domain"}}},
		},
		CreatedAt: created,
		UpdatedAt: created.Add(time.Nanosecond),
	}
}

func mustCreateUpstream(t *testing.T, s Store, u vault.Upstream) vault.Upstream {
	t.Helper()
	if err := s.CreateUpstream(t.Context(), u, newEvent(actionUpstreamCreate)); err != nil {
		t.Fatalf("CreateUpstream(%s): %v", u.Name, err)
	}
	return u
}

func mustGetUpstream(t *testing.T, s Store, name string) vault.Upstream {
	t.Helper()
	u, err := s.GetUpstream(t.Context(), name)
	if err != nil {
		t.Fatalf("GetUpstream(%s): %v", name, err)
	}
	return u
}

func mustPutSecret(t *testing.T, s Store, upstream, kind string, sealed []byte, exp time.Time) {
	t.Helper()
	if err := s.PutSecret(t.Context(), upstream, kind, sealed, exp, newEvent(actionSecretSet)); err != nil {
		t.Fatalf("PutSecret(%s, %s): %v", upstream, kind, err)
	}
}

type storedSecret struct {
	Sealed    []byte
	ExpiresAt time.Time
	Version   int64
}

func mustGetSecret(t *testing.T, s Store, upstream, kind string) storedSecret {
	t.Helper()
	sealed, exp, v, err := s.GetSecret(t.Context(), upstream, kind)
	if err != nil {
		t.Fatalf("GetSecret(%s, %s): %v", upstream, kind, err)
	}
	return storedSecret{sealed, exp, v}
}

func testUpstreams(t *testing.T, s Store) {
	ctx := t.Context()
	ahrefs := newUpstream("ahrefs", base)
	ev := newEvent(actionUpstreamCreate)
	if err := s.CreateUpstream(ctx, ahrefs, ev); err != nil {
		t.Fatalf("CreateUpstream: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target = "ahrefs"
	wantLastEvent(t, s, wantEv)
	if diff := cmp.Diff(ahrefs, mustGetUpstream(t, s, "ahrefs")); diff != "" {
		t.Errorf("GetUpstream (-want +got):\n%s", diff)
	}

	// Nothing but what an upstream needs.
	minimal := vault.Upstream{Name: "resend", BaseURL: "https://api.resend.com", Auth: vault.AuthHeader, Param: "X-Api-Key",
		CreatedAt: at(time.Minute), UpdatedAt: at(time.Minute)}
	mustCreateUpstream(t, s, minimal)
	if diff := cmp.Diff(minimal, mustGetUpstream(t, s, "resend")); diff != "" {
		t.Errorf("GetUpstream(minimal) (-want +got):\n%s", diff)
	}
	mustCreateUpstream(t, s, newUpstream("0-first", base))

	list, err := s.ListUpstreams(ctx)
	if err != nil {
		t.Fatalf("ListUpstreams: %v", err)
	}
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
	}
	if diff := cmp.Diff([]string{"0-first", "ahrefs", "resend"}, names); diff != "" {
		t.Errorf("ListUpstreams names, by name (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(ahrefs, list[1]); diff != "" {
		t.Errorf("ListUpstreams[ahrefs] (-want +got):\n%s", diff)
	}
}

func testUpstreamErrors(t *testing.T, s Store) {
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	before := eventCount(t, s)
	dup := newUpstream("ahrefs", at(time.Hour))
	dup.BaseURL = "https://other.example"
	wantErr(t, "CreateUpstream of an existing name", s.CreateUpstream(ctx, dup, newEvent(actionUpstreamCreate)), vault.ErrExists)
	if got := mustGetUpstream(t, s, "ahrefs"); got.BaseURL != newUpstream("ahrefs", base).BaseURL {
		t.Errorf("a refused CreateUpstream changed the upstream: base URL %s", got.BaseURL)
	}
	_, err := s.GetUpstream(ctx, "nope")
	wantErr(t, "GetUpstream(unknown)", err, vault.ErrNotFound)
	_, err = s.UpdateUpstream(ctx, "nope", func(*vault.Upstream) error { return nil }, newEvent(actionUpstreamUpdate))
	wantErr(t, "UpdateUpstream(unknown)", err, vault.ErrNotFound)
	wantErr(t, "DeleteUpstream(unknown)", s.DeleteUpstream(ctx, "nope", newEvent(actionUpstreamDelete)), vault.ErrNotFound)
	wantErr(t, "PutSecret(unknown upstream)", s.PutSecret(ctx, "nope", vault.SecretCredential, []byte{1}, time.Time{}, newEvent(actionSecretSet)), vault.ErrNotFound)
	_, _, _, err = s.GetSecret(ctx, "ahrefs", vault.SecretCredential)
	wantErr(t, "GetSecret(none set)", err, vault.ErrNotFound)
	err = s.SwapSecrets(ctx, "nope", vault.SecretRefreshToken, 0, map[string]vault.SealedSecret{vault.SecretRefreshToken: {Sealed: []byte{1}}}, newEvent(actionSecretSet))
	wantErr(t, "SwapSecrets(unknown upstream)", err, vault.ErrNotFound)
	wantNoNewEvents(t, s, before)
	if list, err := s.ListUpstreams(ctx); err != nil || len(list) != 1 {
		t.Errorf("ListUpstreams = %d upstreams, %v; want 1", len(list), err)
	}
}

func testUpdateUpstream(t *testing.T, s Store) {
	ctx := t.Context()
	u := mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	mustPutSecret(t, s, "ahrefs", vault.SecretRefreshToken, []byte("sealed"), time.Time{})
	routes := []vault.Route{{Scope: "ahrefs:all", Methods: []string{"*"}, Paths: []string{"/**"}}}
	ev := newEvent(actionUpstreamUpdate)
	got, err := s.UpdateUpstream(ctx, "ahrefs", func(x *vault.Upstream) error {
		if x.Name != "ahrefs" || len(x.Routes) != 2 {
			t.Errorf("UpdateUpstream passed %+v, want the stored upstream", x)
		}
		x.Routes, x.UpdatedAt, x.IdentityAssertion = routes, at(time.Hour), false
		x.Name, x.CreatedAt = "renamed", at(time.Hour) // ignored
		x.Secrets = []string{"made-up"}                // ignored
		return nil
	}, ev)
	if err != nil {
		t.Fatalf("UpdateUpstream: %v", err)
	}
	want := u
	want.Routes, want.UpdatedAt, want.Secrets, want.IdentityAssertion = routes, at(time.Hour), []string{vault.SecretRefreshToken}, false
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("UpdateUpstream returned (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGetUpstream(t, s, "ahrefs")); diff != "" {
		t.Errorf("stored after UpdateUpstream (-want +got):\n%s", diff)
	}
	wantEv := success(ev)
	wantEv.Target = "ahrefs"
	wantLastEvent(t, s, wantEv)

	before := eventCount(t, s)
	boom := errors.New("boom")
	_, err = s.UpdateUpstream(ctx, "ahrefs", func(x *vault.Upstream) error {
		x.Routes = nil
		return boom
	}, newEvent(actionUpstreamUpdate))
	wantErr(t, "UpdateUpstream whose fn fails", err, boom)
	wantNoNewEvents(t, s, before)
	if diff := cmp.Diff(want, mustGetUpstream(t, s, "ahrefs")); diff != "" {
		t.Errorf("a failed UpdateUpstream changed the upstream (-want +got):\n%s", diff)
	}
}

func testUpstreamSecrets(t *testing.T, s Store) {
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	mustCreateUpstream(t, s, newUpstream("other", base))
	// Every byte value survives, and the store keeps the blob as it is.
	blob := make([]byte, 512)
	for i := range blob {
		blob[i] = byte(i)
	}
	ev := newEvent(actionSecretSet)
	exp := at(time.Hour)
	if err := s.PutSecret(ctx, "ahrefs", vault.SecretAccessToken, blob, exp, ev); err != nil {
		t.Fatalf("PutSecret: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target = "ahrefs"
	wantLastEvent(t, s, wantEv)
	got := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken)
	if !bytes.Equal(got.Sealed, blob) || !got.ExpiresAt.Equal(exp) || got.Version <= 0 {
		t.Errorf("GetSecret = %x (exp %v, version %d), want %x (exp %v, version > 0)", got.Sealed, got.ExpiresAt, got.Version, blob, exp)
	}

	// Replacing bumps the version; an empty expiry is the zero time.
	mustPutSecret(t, s, "ahrefs", vault.SecretAccessToken, []byte("second"), time.Time{})
	got2 := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken)
	if string(got2.Sealed) != "second" || !got2.ExpiresAt.IsZero() || got2.Version <= got.Version {
		t.Errorf("after replacing: %q (exp %v, version %d), want \"second\" (no expiry, version > %d)", got2.Sealed, got2.ExpiresAt, got2.Version, got.Version)
	}
	// Kinds and upstreams are separate rows.
	mustPutSecret(t, s, "ahrefs", vault.SecretRefreshToken, []byte("rt"), time.Time{})
	mustPutSecret(t, s, "other", vault.SecretAccessToken, []byte("other"), time.Time{})
	if got := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken); string(got.Sealed) != "second" {
		t.Errorf("another row's write changed this one: %q", got.Sealed)
	}
	// An expired secret is stored but not listed.
	mustPutSecret(t, s, "ahrefs", vault.SecretClientSecret, []byte("old"), time.Now().Add(-time.Minute))
	if got := mustGetSecret(t, s, "ahrefs", vault.SecretClientSecret); string(got.Sealed) != "old" {
		t.Errorf("GetSecret(expired) = %q, want it as stored", got.Sealed)
	}
	if diff := cmp.Diff([]string{vault.SecretAccessToken, vault.SecretRefreshToken}, mustGetUpstream(t, s, "ahrefs").Secrets); diff != "" {
		t.Errorf("GetUpstream Secrets (-want +got):\n%s", diff)
	}
	list, err := s.ListUpstreams(ctx)
	if err != nil {
		t.Fatalf("ListUpstreams: %v", err)
	}
	if diff := cmp.Diff([][]string{{vault.SecretAccessToken, vault.SecretRefreshToken}, {vault.SecretAccessToken}},
		[][]string{list[0].Secrets, list[1].Secrets}); diff != "" {
		t.Errorf("ListUpstreams Secrets (-want +got):\n%s", diff)
	}
}

func testSwapSecrets(t *testing.T, s Store) {
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))

	// Version 0: the secret must not exist yet.
	ev := newEvent(actionSecretSet)
	if err := s.SwapSecrets(ctx, "ahrefs", vault.SecretRefreshToken, 0, map[string]vault.SealedSecret{
		vault.SecretRefreshToken: {Sealed: []byte("rt1")},
	}, ev); err != nil {
		t.Fatalf("SwapSecrets(version 0, none stored): %v", err)
	}
	wantEv := success(ev)
	wantEv.Target = "ahrefs"
	wantLastEvent(t, s, wantEv)
	rt1 := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)

	// A rotated refresh token lands together with its access token.
	exp := at(time.Hour)
	if err := s.SwapSecrets(ctx, "ahrefs", vault.SecretRefreshToken, rt1.Version, map[string]vault.SealedSecret{
		vault.SecretRefreshToken: {Sealed: []byte("rt2")},
		vault.SecretAccessToken:  {Sealed: []byte("at2"), ExpiresAt: exp},
	}, newEvent(actionSecretSet)); err != nil {
		t.Fatalf("SwapSecrets: %v", err)
	}
	rt2 := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)
	at2 := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken)
	if string(rt2.Sealed) != "rt2" || rt2.Version <= rt1.Version || string(at2.Sealed) != "at2" || !at2.ExpiresAt.Equal(exp) {
		t.Errorf("after SwapSecrets: refresh %q v%d (was v%d), access %q exp %v", rt2.Sealed, rt2.Version, rt1.Version, at2.Sealed, at2.ExpiresAt)
	}

	// A replica holding the old version loses, and writes nothing.
	before := eventCount(t, s)
	for _, v := range []int64{rt1.Version, 0, rt2.Version + 1} {
		err := s.SwapSecrets(ctx, "ahrefs", vault.SecretRefreshToken, v, map[string]vault.SealedSecret{
			vault.SecretRefreshToken: {Sealed: []byte("stale")},
			vault.SecretAccessToken:  {Sealed: []byte("stale")},
		}, newEvent(actionSecretSet))
		wantErr(t, fmt.Sprintf("SwapSecrets with version %d (stored %d)", v, rt2.Version), err, vault.ErrConflict)
	}
	wantNoNewEvents(t, s, before)
	if got := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken); string(got.Sealed) != "rt2" || got.Version != rt2.Version {
		t.Errorf("a lost SwapSecrets changed the refresh token: %q v%d", got.Sealed, got.Version)
	}
	if got := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken); string(got.Sealed) != "at2" {
		t.Errorf("a lost SwapSecrets changed the access token: %q", got.Sealed)
	}
}

func testSwapSecretsConcurrent(t *testing.T, s Store) {
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	mustPutSecret(t, s, "ahrefs", vault.SecretRefreshToken, []byte("rt0"), time.Time{})
	v := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken).Version
	const n = 10
	var wins atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			rt := fmt.Sprintf("rt-%d", i)
			err := s.SwapSecrets(ctx, "ahrefs", vault.SecretRefreshToken, v, map[string]vault.SealedSecret{
				vault.SecretRefreshToken: {Sealed: []byte(rt)},
				vault.SecretAccessToken:  {Sealed: []byte(fmt.Sprintf("at-%d", i))},
			}, newEvent(actionSecretSet))
			switch {
			case err == nil:
				wins.Add(1)
				winner.Store(i)
			case !errors.Is(err, vault.ErrConflict):
				t.Errorf("SwapSecrets %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d of %d concurrent SwapSecrets with one version won, want exactly 1", wins.Load(), n)
	}
	w := winner.Load().(int)
	rt := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)
	at := mustGetSecret(t, s, "ahrefs", vault.SecretAccessToken)
	if string(rt.Sealed) != fmt.Sprintf("rt-%d", w) || string(at.Sealed) != fmt.Sprintf("at-%d", w) {
		t.Errorf("stored refresh %q and access %q, want both of winner %d", rt.Sealed, at.Sealed, w)
	}
}

func testDeleteUpstream(t *testing.T, s Store) {
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	mustCreateUpstream(t, s, newUpstream("other", base))
	for _, k := range []string{vault.SecretRefreshToken, vault.SecretAccessToken, vault.SecretClientSecret} {
		mustPutSecret(t, s, "ahrefs", k, []byte("x"), time.Time{})
	}
	mustPutSecret(t, s, "other", vault.SecretRefreshToken, []byte("kept"), time.Time{})
	old := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)
	ev := newEvent(actionUpstreamDelete)
	if err := s.DeleteUpstream(ctx, "ahrefs", ev); err != nil {
		t.Fatalf("DeleteUpstream: %v", err)
	}
	wantEv := success(ev)
	wantEv.Target = "ahrefs"
	wantLastEvent(t, s, wantEv)
	_, err := s.GetUpstream(ctx, "ahrefs")
	wantErr(t, "GetUpstream after delete", err, vault.ErrNotFound)
	for _, k := range []string{vault.SecretRefreshToken, vault.SecretAccessToken, vault.SecretClientSecret} {
		_, _, _, err := s.GetSecret(ctx, "ahrefs", k)
		wantErr(t, "GetSecret("+k+") after delete", err, vault.ErrNotFound)
	}
	if got := mustGetSecret(t, s, "other", vault.SecretRefreshToken); string(got.Sealed) != "kept" {
		t.Errorf("deleting one upstream changed another's secret: %q", got.Sealed)
	}
	// Created again, it starts without secrets, and a version of the old row never matches.
	mustCreateUpstream(t, s, newUpstream("ahrefs", at(time.Hour)))
	if got := mustGetUpstream(t, s, "ahrefs"); len(got.Secrets) != 0 {
		t.Errorf("a re-created upstream has secrets %v", got.Secrets)
	}
	mustPutSecret(t, s, "ahrefs", vault.SecretRefreshToken, []byte("new"), time.Time{})
	err = s.SwapSecrets(ctx, "ahrefs", vault.SecretRefreshToken, old.Version, map[string]vault.SealedSecret{
		vault.SecretRefreshToken: {Sealed: []byte("from the old row")},
	}, newEvent(actionSecretSet))
	wantErr(t, "SwapSecrets with the version of a deleted row", err, vault.ErrConflict)
}
