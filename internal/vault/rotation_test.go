package vault_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/vault"
)

func TestKeyringSetAndReload(t *testing.T) {
	a, b := randomKey(t), randomKey(t)
	blobB, err := mustKeyring(t, b, a).Seal("ahrefs", vault.SecretCredential, []byte("the secret"))
	if err != nil {
		t.Fatal(err)
	}
	kr := mustKeyring(t, a)
	if err := kr.CanOpen("ahrefs", vault.SecretCredential, blobB); !errors.Is(err, vault.ErrSealed) {
		t.Fatalf("CanOpen without the key = %v, want ErrSealed", err)
	}
	// The reload hook is asked for the unknown key; when it refuses, the blob does not open.
	var asked []string
	kr.keys.OnUnknownKey(func(id string) bool { asked = append(asked, id); return false })
	if _, err := kr.Open("ahrefs", vault.SecretCredential, blobB); !errors.Is(err, vault.ErrSealed) {
		t.Fatalf("Open = %v, want ErrSealed", err)
	}
	if len(asked) != 1 || asked[0] != masterkey.ID(b) {
		t.Fatalf("OnUnknownKey asked for %v, want [%s]", asked, masterkey.ID(b))
	}
	// When it reloads (Set), the blob opens, and new seals use the new newest key.
	kr.keys.OnUnknownKey(func(id string) bool { return kr.keys.Set(keysOf(b, a)) == nil })
	got, err := kr.Open("ahrefs", vault.SecretCredential, blobB)
	if err != nil || string(got) != "the secret" {
		t.Fatalf("Open after reload = %q, %v", got, err)
	}
	if ids := kr.keys.KeyIDs(); len(ids) != 2 || ids[0] != masterkey.ID(b) {
		t.Errorf("KeyIDs = %v", ids)
	}
	fresh, _ := kr.Seal("ahrefs", vault.SecretCredential, []byte("x"))
	if vault.WrappedBy(fresh) != masterkey.ID(b) {
		t.Errorf("a new blob is wrapped by %s, want %s", vault.WrappedBy(fresh), masterkey.ID(b))
	}
	if err := kr.keys.Set(nil); err == nil {
		t.Error("Set() with no key succeeded")
	}
	if err := kr.keys.Set(keysOf([]byte("short"))); err == nil {
		t.Error("Set with a short key succeeded")
	}
	if ids := kr.keys.KeyIDs(); len(ids) != 2 {
		t.Errorf("a failed Set changed the keys: %v", ids)
	}
}

func TestKeyringRewrapAndCanOpen(t *testing.T) {
	a, b := randomKey(t), randomKey(t)
	blobA, _ := mustKeyring(t, a).Seal("resend", vault.SecretCredential, []byte("re_canary"))
	both := mustKeyring(t, b, a)
	re, err := both.Rewrap("resend", vault.SecretCredential, blobA)
	if err != nil || vault.WrappedBy(re) != masterkey.ID(b) {
		t.Fatalf("Rewrap: %v, wrapped by %s", err, vault.WrappedBy(re))
	}
	onlyB := mustKeyring(t, b)
	if err := onlyB.CanOpen("resend", vault.SecretCredential, re); err != nil {
		t.Errorf("CanOpen(rewrapped) with the new key only: %v", err)
	}
	if err := onlyB.CanOpen("resend", vault.SecretCredential, blobA); err == nil {
		t.Error("CanOpen(old blob) with the new key only succeeded")
	}
	if err := onlyB.CanOpen("other", vault.SecretCredential, re); err == nil {
		t.Error("CanOpen for another row succeeded")
	}
	if got, err := onlyB.Open("resend", vault.SecretCredential, re); err != nil || !bytes.Equal(got, []byte("re_canary")) {
		t.Errorf("Open(rewrapped) = %q, %v", got, err)
	}
}

func keysOf(secrets ...[]byte) []masterkey.Key {
	keys := make([]masterkey.Key, len(secrets))
	for i, s := range secrets {
		keys[i] = masterkey.Key{Secret: s}
	}
	return keys
}
