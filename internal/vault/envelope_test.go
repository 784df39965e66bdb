package vault_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/vault"
)

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// keyring is envelopes under a master keyring of keys, newest first.
type keyring struct {
	*vault.Envelopes
	keys *masterkey.Keyring
}

func mustKeyring(t testing.TB, keys ...[]byte) *keyring {
	t.Helper()
	k, err := masterkey.NewKeyring(keys...)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return &keyring{Envelopes: vault.NewEnvelopes(k), keys: k}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	kr := mustKeyring(t, randomKey(t))
	for _, secret := range [][]byte{nil, []byte("x"), []byte("sk_live_0123456789abcdef"), bytes.Repeat([]byte{0, 0xff}, 4096)} {
		blob, err := kr.Seal("ahrefs", vault.SecretCredential, secret)
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if len(secret) > 4 && bytes.Contains(blob, secret) {
			t.Errorf("the blob contains the secret in the clear")
		}
		got, err := kr.Open("ahrefs", vault.SecretCredential, blob)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, secret) {
			t.Errorf("Open = %x, want %x", got, secret)
		}
		again, _ := kr.Seal("ahrefs", vault.SecretCredential, secret)
		if bytes.Equal(again, blob) {
			t.Errorf("two seals of one secret are equal: the data key or nonce is not fresh")
		}
	}
}

func TestEnvelopeRefuses(t *testing.T) {
	master := randomKey(t)
	kr := mustKeyring(t, master)
	blob, err := kr.Seal("ahrefs", vault.SecretCredential, []byte("the secret"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(blob)
		b[i] ^= 1
		return b
	}
	tests := map[string]struct {
		kr             *keyring
		upstream, kind string
		blob           []byte
	}{
		"other upstream":     {kr, "resend", vault.SecretCredential, blob},
		"other kind":         {kr, "ahrefs", vault.SecretClientSecret, blob},
		"aad boundary":       {kr, "ahrefs/credential", "", blob},
		"other master key":   {mustKeyring(t, randomKey(t)), "ahrefs", vault.SecretCredential, blob},
		"version byte":       {kr, "ahrefs", vault.SecretCredential, flip(0)},
		"key id":             {kr, "ahrefs", vault.SecretCredential, flip(3)},
		"wrapped key":        {kr, "ahrefs", vault.SecretCredential, flip(30)},
		"ciphertext":         {kr, "ahrefs", vault.SecretCredential, flip(len(blob) - 20)},
		"tag":                {kr, "ahrefs", vault.SecretCredential, flip(len(blob) - 1)},
		"truncated":          {kr, "ahrefs", vault.SecretCredential, blob[:len(blob)-1]},
		"too short":          {kr, "ahrefs", vault.SecretCredential, blob[:20]},
		"empty":              {kr, "ahrefs", vault.SecretCredential, nil},
		"plaintext, not env": {kr, "ahrefs", vault.SecretCredential, []byte(strings.Repeat("x", 200))},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tc.kr.Open(tc.upstream, tc.kind, tc.blob)
			if !errors.Is(err, vault.ErrSealed) {
				t.Fatalf("Open = %q, %v; want ErrSealed", got, err)
			}
			if strings.Contains(err.Error(), "the secret") {
				t.Errorf("the error quotes the secret: %v", err)
			}
		})
	}
}

func TestKeyringRewrap(t *testing.T) {
	oldKey, newKey := randomKey(t), randomKey(t)
	oldRing := mustKeyring(t, oldKey)
	blob, err := oldRing.Seal("ahrefs", vault.SecretRefreshToken, []byte("refresh-me"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := vault.WrappedBy(blob), masterkey.ID(oldKey); got != want {
		t.Fatalf("WrappedBy = %s, want the old key %s", got, want)
	}

	// After rotation: the newest key first, the old one still opens old blobs.
	ring := mustKeyring(t, newKey, oldKey)
	if diff := fmt.Sprint(ring.keys.KeyIDs()); diff != fmt.Sprint([]string{masterkey.ID(newKey), masterkey.ID(oldKey)}) {
		t.Errorf("KeyIDs = %s", diff)
	}
	if got, err := ring.Open("ahrefs", vault.SecretRefreshToken, blob); err != nil || string(got) != "refresh-me" {
		t.Fatalf("Open an old blob with the rotated ring = %q, %v", got, err)
	}
	re, err := ring.Rewrap("ahrefs", vault.SecretRefreshToken, blob)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if got, want := vault.WrappedBy(re), masterkey.ID(newKey); got != want {
		t.Errorf("WrappedBy(rewrapped) = %s, want the new key %s", got, want)
	}
	// The ciphertext is untouched: only the header and the wrapped key change.
	const ctStart = 1 + 8 + 12 + 32 + 16
	if !bytes.Equal(re[ctStart:], blob[ctStart:]) {
		t.Errorf("Rewrap changed the ciphertext")
	}
	// The new key alone opens it; the old key alone no longer does.
	if got, err := mustKeyring(t, newKey).Open("ahrefs", vault.SecretRefreshToken, re); err != nil || string(got) != "refresh-me" {
		t.Errorf("Open the rewrapped blob with the new key only = %q, %v", got, err)
	}
	if _, err := oldRing.Open("ahrefs", vault.SecretRefreshToken, re); !errors.Is(err, vault.ErrSealed) {
		t.Errorf("the old key still opens the rewrapped blob: %v", err)
	}
	// Rewrapping again changes nothing; a blob of another row does not rewrap.
	if again, err := ring.Rewrap("ahrefs", vault.SecretRefreshToken, re); err != nil || !bytes.Equal(again, re) {
		t.Errorf("Rewrap of a blob wrapped by the newest key = changed or %v", err)
	}
	if _, err := ring.Rewrap("resend", vault.SecretRefreshToken, blob); !errors.Is(err, vault.ErrSealed) {
		t.Errorf("Rewrap under another row's aad = %v, want ErrSealed", err)
	}
	// A key that is not loaded cannot rewrap.
	if _, err := mustKeyring(t, newKey).Rewrap("ahrefs", vault.SecretRefreshToken, blob); !errors.Is(err, vault.ErrSealed) {
		t.Errorf("Rewrap without the old key = %v, want ErrSealed", err)
	}
}

func TestSecretRedacted(t *testing.T) {
	s := vault.NewSecret([]byte("canary-1234"))
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("x", slog.Any("secret", s), "s2", s)
	out := logs.String() + fmt.Sprintf("%v %s %x %q %+v %#v %d", s, s, s, s, s, s, s) + fmt.Sprint(struct{ S vault.Secret }{s})
	if strings.Contains(out, "canary") || strings.Contains(out, fmt.Sprintf("%x", "canary")) {
		t.Errorf("a secret printed in the clear: %s", out)
	}
	if !strings.Contains(logs.String(), vault.Redacted) {
		t.Errorf("the log does not say REDACTED: %s", logs.String())
	}
}
