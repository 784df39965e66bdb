package storetest

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

// RewrapStore is what a master key rotation needs of a store: every sealed blob in pages, and
// compare-and-swap writes of re-wrapped ones.
type RewrapStore interface {
	SealedSecrets(ctx context.Context, after vault.SealedRow, limit int) ([]vault.SealedRow, error)
	RewrapSecrets(ctx context.Context, rows []vault.SealedRow, ev audit.Event) (int, error)
	SealedSigningKeys(ctx context.Context, after string, limit int) ([]token.SealedKey, error)
	ResealSigningKeys(ctx context.Context, keys []token.SealedKey, ev audit.Event) (int, error)
}

const actionRewrap = "master_key.rewrap"

func testRewrap(t *testing.T, s Store) {
	rs, ok := s.(RewrapStore)
	if !ok {
		t.Skip("the store cannot re-wrap sealed blobs")
	}
	ctx := t.Context()
	mustCreateUpstream(t, s, newUpstream("ahrefs", base))
	mustCreateUpstream(t, s, newUpstream("resend", base))
	blob := func(name string) []byte { return []byte("sealed:" + name) }
	mustPutSecret(t, s, "ahrefs", vault.SecretRefreshToken, blob("ahrefs/rt"), time.Time{})
	mustPutSecret(t, s, "ahrefs", vault.SecretAccessToken, blob("ahrefs/at"), at(-time.Hour)) // expired rows too
	mustPutSecret(t, s, "ahrefs", vault.SecretClientSecret, blob("ahrefs/cs"), time.Time{})
	mustPutSecret(t, s, "resend", vault.SecretCredential, blob("resend/cred"), time.Time{})
	for i, kid := range []string{"kb", "ka", "kc"} {
		k := signingKey(kid, at(time.Duration(i)*time.Hour))
		k.Private = blob(kid)
		if err := s.AddSigningKey(ctx, k, time.Time{}, newEvent(audit.ActionKeyRotate)); err != nil {
			t.Fatalf("AddSigningKey: %v", err)
		}
	}

	// Pages in (upstream, kind) order, after a cursor, to the end.
	var secrets []vault.SealedRow
	for after := (vault.SealedRow{}); ; {
		page, err := rs.SealedSecrets(ctx, after, 2)
		if err != nil {
			t.Fatalf("SealedSecrets: %v", err)
		}
		if len(page) > 2 {
			t.Fatalf("SealedSecrets(limit 2) returned %d rows", len(page))
		}
		secrets = append(secrets, page...)
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1]
	}
	var got []string
	for _, r := range secrets {
		got = append(got, r.Upstream+"/"+r.Kind)
		if !bytes.Equal(r.Sealed, blob(r.Upstream+"/"+map[string]string{vault.SecretRefreshToken: "rt", vault.SecretAccessToken: "at",
			vault.SecretClientSecret: "cs", vault.SecretCredential: "cred"}[r.Kind])) {
			t.Errorf("SealedSecrets: %s/%s holds %q", r.Upstream, r.Kind, r.Sealed)
		}
	}
	want := []string{"ahrefs/" + vault.SecretAccessToken, "ahrefs/" + vault.SecretClientSecret, "ahrefs/" + vault.SecretRefreshToken, "resend/" + vault.SecretCredential}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("SealedSecrets pages = %v, want %v", got, want)
	}
	var keys []token.SealedKey
	for after := ""; ; {
		page, err := rs.SealedSigningKeys(ctx, after, 2)
		if err != nil {
			t.Fatalf("SealedSigningKeys: %v", err)
		}
		keys = append(keys, page...)
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].KID
	}
	if len(keys) != 3 || keys[0].KID != "ka" || keys[1].KID != "kb" || keys[2].KID != "kc" || !bytes.Equal(keys[0].Sealed, blob("ka")) {
		t.Fatalf("SealedSigningKeys pages = %+v", keys)
	}

	// Compare-and-swap: a row changed since it was read is left as it is; versions stay.
	before := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)
	mustPutSecret(t, s, "resend", vault.SecretCredential, []byte("written meanwhile"), time.Time{})
	for i := range secrets {
		secrets[i].New = []byte("rewrapped:" + secrets[i].Upstream + "/" + secrets[i].Kind)
	}
	secrets[1].New = nil // nothing to write
	ev := newEvent(actionRewrap)
	ev.ActorType, ev.Detail = audit.ActorSystem, "table=upstream_secrets"
	n, err := rs.RewrapSecrets(ctx, secrets, ev)
	if err != nil || n != 2 {
		t.Fatalf("RewrapSecrets = %d, %v; want 2 rows (one unchanged, one changed meanwhile)", n, err)
	}
	wantEv := success(ev)
	wantEv.Detail = "table=upstream_secrets rows=2"
	wantLastEvent(t, s, wantEv)
	after := mustGetSecret(t, s, "ahrefs", vault.SecretRefreshToken)
	if string(after.Sealed) != "rewrapped:ahrefs/"+vault.SecretRefreshToken || after.Version != before.Version {
		t.Errorf("after RewrapSecrets: %q version %d, want the new blob and version %d", after.Sealed, after.Version, before.Version)
	}
	if got := mustGetSecret(t, s, "ahrefs", vault.SecretClientSecret); !bytes.Equal(got.Sealed, blob("ahrefs/cs")) {
		t.Errorf("a row without a new blob was written: %q", got.Sealed)
	}
	if got := mustGetSecret(t, s, "resend", vault.SecretCredential); string(got.Sealed) != "written meanwhile" {
		t.Errorf("a row changed meanwhile was overwritten: %q", got.Sealed)
	}
	// Nothing written: no event.
	evs, _ := s.ListEvents(ctx, audit.Filter{Limit: 1})
	if n, err := rs.RewrapSecrets(ctx, secrets, newEvent(actionRewrap)); err != nil || n != 0 {
		t.Errorf("RewrapSecrets again = %d, %v; want 0 rows", n, err)
	}
	if evs2, _ := s.ListEvents(ctx, audit.Filter{Limit: 1}); len(evs) != 1 || len(evs2) != 1 || evs2[0].ID != evs[0].ID {
		t.Errorf("a re-wrap that wrote nothing appended an event")
	}

	keys[0].New, keys[2].New = []byte("resealed:ka"), []byte("resealed:kc")
	keys[2].Sealed = []byte("stale")
	ev = newEvent(actionRewrap)
	if n, err := rs.ResealSigningKeys(ctx, keys, ev); err != nil || n != 1 {
		t.Fatalf("ResealSigningKeys = %d, %v; want 1 row", n, err)
	}
	wantEv = success(ev)
	wantEv.Detail += " rows=1"
	wantLastEvent(t, s, wantEv)
	listed, err := s.ListSigningKeys(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	priv := map[string]string{}
	for _, k := range listed {
		priv[k.KID] = string(k.Private)
	}
	if priv["ka"] != "resealed:ka" || priv["kb"] != "sealed:kb" || priv["kc"] != "sealed:kc" {
		t.Errorf("after ResealSigningKeys: %v", priv)
	}
}
