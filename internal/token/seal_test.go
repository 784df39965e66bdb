package token_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/masterkey"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
)

func newMasterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, masterkey.Size)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// legacySeal seals like earlier versions did: nonce || AES-256-GCM(master, plain, kid).
func legacySeal(t *testing.T, master, plain []byte, kid string, firstByte int) []byte {
	t.Helper()
	block, _ := aes.NewCipher(master)
	aead, _ := cipher.NewGCM(block)
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	if firstByte >= 0 {
		nonce[0] = byte(firstByte)
	}
	return aead.Seal(nonce, nonce, plain, []byte(kid))
}

// Keys seals new signing keys in the new form with the shared keyring, and opens keys sealed by
// earlier versions.
func TestKeysWithMasterKeyring(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, b := newMasterKey(t), newMasterKey(t)
	// A key written by an earlier version: sealed with a, no header. Its first byte is fixed: a
	// random nonce starts with the current form's version byte once in 256 runs, and SealedBy
	// would then read a key id out of it.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	now := time.Now()
	old := token.SigningKey{KID: "old-kid", Alg: token.AlgEdDSA, PublicJWK: []byte(`{}`), Private: legacySeal(t, a, der, "old-kid", 0),
		CreatedAt: now.Add(-time.Hour), ActiveAt: now.Add(-time.Hour)}
	if err := st.AddSigningKey(ctx, old, time.Time{}, audit.New(now, "", audit.ActionKeyRotate)); err != nil {
		t.Fatal(err)
	}
	ring, err := masterkey.NewKeyring(b, a)
	if err != nil {
		t.Fatal(err)
	}
	k, err := token.NewKeys(token.KeysConfig{Store: st, Sealer: ring})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Ensure(ctx); err != nil {
		t.Fatalf("Ensure with a legacy key in the store: %v", err)
	}
	if _, err := k.Rotate(ctx, audit.New(now, "", audit.ActionKeyRotate)); err != nil {
		t.Fatal(err)
	}
	rows, _ := st.ListSigningKeys(ctx, now)
	if len(rows) != 2 {
		t.Fatalf("%d keys, want 2", len(rows))
	}
	for _, r := range rows {
		want := masterkey.ID(b)
		if r.KID == "old-kid" {
			want = ""
		}
		if got := masterkey.SealedBy(r.Private); got != want {
			t.Errorf("key %s sealed by %q, want %q", r.KID, got, want)
		}
	}
	if _, err := k.Sign(ctx, "at+jwt", map[string]any{"sub": "x"}); err != nil {
		t.Errorf("Sign with the legacy key: %v", err)
	}
}
