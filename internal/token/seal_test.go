package token_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/sqlstore"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/internal/vault"
)

func newMasterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, token.MasterKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustRing(t *testing.T, keys ...[]byte) *token.MasterKeyring {
	t.Helper()
	r, err := token.NewMasterKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return r
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

func TestParseMasterKeys(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	text := token.FormatMasterKeys([][]byte{a, b})
	if !strings.HasPrefix(string(text), "#") || bytes.Contains(text, a) {
		t.Errorf("FormatMasterKeys = %q", text)
	}
	keys, err := token.ParseMasterKeys(text)
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], a) || !bytes.Equal(keys[1], b) {
		t.Fatalf("ParseMasterKeys(Format) = %x, %v", keys, err)
	}
	// Blank lines, comments, CRLF and padding are accepted.
	edited := "\r\n# comment\n\n  " + base64.URLEncoding.EncodeToString(b) + "  \r\n" + base64.RawURLEncoding.EncodeToString(a) + "\n"
	if keys, err := token.ParseMasterKeys([]byte(edited)); err != nil || len(keys) != 2 || !bytes.Equal(keys[0], b) {
		t.Errorf("ParseMasterKeys(edited) = %x, %v", keys, err)
	}
	// The legacy file: 32 raw bytes.
	if keys, err := token.ParseMasterKeys(a); err != nil || len(keys) != 1 || !bytes.Equal(keys[0], a) {
		t.Errorf("ParseMasterKeys(raw) = %x, %v", keys, err)
	}
	for name, tc := range map[string]struct {
		data string
		want string
	}{
		"empty":         {"", "no master key"},
		"comments only": {"# x\n\n", "no master key"},
		"short key":     {base64.RawURLEncoding.EncodeToString(a[:16]) + "\n", "line 1 is not"},
		"not base64":    {"# k\n" + strings.Repeat("!", 43) + "\n", "line 2 is not"},
		"std base64":    {base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{0xff}, 32)) + "\n", "line 1 is not"},
		"repeated":      {string(token.FormatMasterKeys([][]byte{a, a})), "repeats master key " + token.MasterKeyID(a)},
		"raw 31 bytes":  {string(bytes.Repeat([]byte{0}, 31)), "neither a 32-byte key nor a keyring"},
	} {
		if _, err := token.ParseMasterKeys([]byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseMasterKeys = %v, want an error containing %q", name, err, tc.want)
		}
	}
	if token.MasterKeyID(a) != vault.KeyID(a) || len(token.MasterKeyID(a)) != 16 {
		t.Errorf("MasterKeyID = %s, vault.KeyID = %s: they must agree", token.MasterKeyID(a), vault.KeyID(a))
	}
}

func TestMasterKeyFileFormats(t *testing.T) {
	dir := t.TempDir()
	// A legacy file of 32 raw bytes still loads, as one key.
	legacy := filepath.Join(dir, "legacy.key")
	a := newMasterKey(t)
	os.WriteFile(legacy, a, 0o600)
	keys, created, err := token.LoadOrCreateMasterKeys(legacy)
	if err != nil || created || len(keys) != 1 || !bytes.Equal(keys[0], a) {
		t.Fatalf("LoadOrCreateMasterKeys(legacy) = %x, %v, %v", keys, created, err)
	}
	// A new file is a keyring of one key.
	path := filepath.Join(dir, "master.key")
	keys, created, err = token.LoadOrCreateMasterKeys(path)
	if err != nil || !created || len(keys) != 1 {
		t.Fatalf("LoadOrCreateMasterKeys(new) = %d keys, %v, %v", len(keys), created, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), base64.RawURLEncoding.EncodeToString(keys[0])+"\n") {
		t.Errorf("the new file is not a keyring:\n%s", data)
	}
	// WriteMasterKeys replaces it atomically, 0600, newest first, leaving no temporary file.
	b := newMasterKey(t)
	if err := token.WriteMasterKeys(path, [][]byte{b, keys[0]}); err != nil {
		t.Fatal(err)
	}
	got, err := token.ReadMasterKeys(path)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0], b) || !bytes.Equal(got[1], keys[0]) {
		t.Fatalf("ReadMasterKeys after WriteMasterKeys = %x, %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("the directory holds %d files, want 2 (a temporary file was left)", len(entries))
	}
	// Group- or world-accessible files are refused.
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		os.Chmod(path, mode)
		if _, err := token.ReadMasterKeys(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %v accepted: %v", mode, err)
		}
	}
	if err := token.WriteMasterKeys(path, nil); err == nil {
		t.Error("WriteMasterKeys with no key succeeded")
	}
}

func TestMasterKeyringSeal(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	plain := []byte("pkcs8 bytes of a private key")
	sealed, err := mustRing(t, a).Seal(plain, "kid1")
	if err != nil {
		t.Fatal(err)
	}
	if token.SealedBy(sealed) != token.MasterKeyID(a) || bytes.Contains(sealed, plain) {
		t.Fatalf("SealedBy = %q, want %s", token.SealedBy(sealed), token.MasterKeyID(a))
	}
	// Any key of the ring opens it; a ring without its key does not.
	for _, ring := range []*token.MasterKeyring{mustRing(t, a), mustRing(t, b, a)} {
		if got, err := ring.Open(sealed, "kid1"); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, %v", got, err)
		}
	}
	if _, err := mustRing(t, b).Open(sealed, "kid1"); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("Open without its key: %v", err)
	}
	// The kid and the header are bound to the blob.
	if _, err := mustRing(t, a).Open(sealed, "kid2"); err == nil {
		t.Error("a blob opened for another kid")
	}
	swapped := bytes.Clone(sealed)
	copy(swapped[1:9], []byte(token.SealedBy(sealed))[:8]) // another id
	if _, err := mustRing(t, a).Open(swapped, "kid1"); err == nil {
		t.Error("a blob with another header opened")
	}

	// Reseal moves it to the newest key; resealing again changes nothing.
	ring := mustRing(t, b, a)
	resealed, err := ring.Reseal(sealed, "kid1")
	if err != nil || token.SealedBy(resealed) != token.MasterKeyID(b) {
		t.Fatalf("Reseal: %v, sealed by %s", err, token.SealedBy(resealed))
	}
	if got, err := mustRing(t, b).Open(resealed, "kid1"); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("Open(resealed) with the new key only = %q, %v", got, err)
	}
	if again, err := ring.Reseal(resealed, "kid1"); err != nil || !bytes.Equal(again, resealed) {
		t.Errorf("Reseal of a blob of the newest key changed it (%v)", err)
	}
}

func TestMasterKeyringLegacyBlobs(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	plain := []byte("a private key sealed by an earlier version")
	// Also blobs whose random first byte looks like the version byte of the new form.
	for _, first := range []int{-1, 1} {
		old := legacySeal(t, a, plain, "kid1", first)
		for _, ring := range []*token.MasterKeyring{mustRing(t, a), mustRing(t, b, a)} {
			if got, err := ring.Open(old, "kid1"); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Open(legacy, first byte %d) = %q, %v", first, got, err)
			}
		}
		if _, err := mustRing(t, b).Open(old, "kid1"); err == nil {
			t.Error("a legacy blob opened with another key")
		}
		if _, err := mustRing(t, a).Open(old, "kid2"); err == nil {
			t.Error("a legacy blob opened for another kid")
		}
		// Resealing a legacy blob gives the new form, even under the same (only) key.
		for _, ring := range []*token.MasterKeyring{mustRing(t, a), mustRing(t, b, a)} {
			newest := ring.KeyIDs()[0]
			resealed, err := ring.Reseal(old, "kid1")
			if err != nil || token.SealedBy(resealed) != newest {
				t.Fatalf("Reseal(legacy) sealed by %q, %v; want %s", token.SealedBy(resealed), err, newest)
			}
			if got, err := ring.Open(resealed, "kid1"); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Open(resealed legacy) = %q, %v", got, err)
			}
		}
	}
	if token.SealedBy(legacySeal(t, a, plain, "k", 0)) != "" {
		t.Error("SealedBy of a legacy blob is not empty")
	}
}

func TestMasterKeyringReloadsOnUnknownKey(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	sealed, _ := mustRing(t, b, a).Seal([]byte("x"), "kid")
	ring := mustRing(t, a)
	calls := 0
	ring.OnUnknownKey(func(id string) bool {
		calls++
		if id != token.MasterKeyID(b) {
			t.Errorf("OnUnknownKey(%s), want %s", id, token.MasterKeyID(b))
		}
		return false // rate-limited: not reloaded
	})
	if _, err := ring.Open(sealed, "kid"); err == nil || calls != 1 {
		t.Fatalf("Open with a refused reload: %v (%d calls)", err, calls)
	}
	ring.OnUnknownKey(func(string) bool {
		calls++
		return ring.Set(b, a) == nil
	})
	if got, err := ring.Open(sealed, "kid"); err != nil || string(got) != "x" || calls != 2 {
		t.Fatalf("Open after a reload = %q, %v (%d calls)", got, err, calls)
	}
	if ids := ring.KeyIDs(); len(ids) != 2 || ids[0] != token.MasterKeyID(b) {
		t.Errorf("KeyIDs = %v", ids)
	}
	// A blob of a known key that does not open (corrupted) does not reload.
	bad := bytes.Clone(sealed)
	bad[len(bad)-1] ^= 1
	if _, err := ring.Open(bad, "kid"); err == nil || calls != 2 {
		t.Errorf("Open(corrupted) = %v (%d calls)", err, calls)
	}
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
	ring := mustRing(t, b, a)
	k, err := token.NewKeys(token.KeysConfig{Store: st, MasterKey: b})
	if err != nil {
		t.Fatal(err)
	}
	k.UseMasterKeyring(ring)
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
		want := token.MasterKeyID(b)
		if r.KID == "old-kid" {
			want = ""
		}
		if got := token.SealedBy(r.Private); got != want {
			t.Errorf("key %s sealed by %q, want %q", r.KID, got, want)
		}
	}
	if _, err := k.Sign(ctx, "at+jwt", map[string]any{"sub": "x"}); err != nil {
		t.Errorf("Sign with the legacy key: %v", err)
	}
}
