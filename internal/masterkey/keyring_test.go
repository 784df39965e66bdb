package masterkey_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/masterkey"
)

func newMasterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, masterkey.Size)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func keysOf(secrets ...[]byte) []masterkey.Key {
	keys := make([]masterkey.Key, len(secrets))
	for i, s := range secrets {
		keys[i] = masterkey.Key{Secret: s}
	}
	return keys
}

func mustRing(t *testing.T, keys ...[]byte) *masterkey.Keyring {
	t.Helper()
	r, err := masterkey.NewKeyring(keys...)
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
	text := masterkey.Format(keysOf(a, b))
	if !strings.HasPrefix(string(text), "#") || bytes.Contains(text, a) {
		t.Errorf("FormatMasterKeys = %q", text)
	}
	keys, err := masterkey.Parse(text)
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0].Secret, a) || !bytes.Equal(keys[1].Secret, b) {
		t.Fatalf("ParseMasterKeys(Format) = %v, %v", masterkey.IDs(keys), err)
	}
	// Blank lines, comments, CRLF and padding are accepted.
	edited := "\r\n# comment\n\n  " + base64.URLEncoding.EncodeToString(b) + "  \r\n" + base64.RawURLEncoding.EncodeToString(a) + "\n"
	if keys, err := masterkey.Parse([]byte(edited)); err != nil || len(keys) != 2 || !bytes.Equal(keys[0].Secret, b) {
		t.Errorf("ParseMasterKeys(edited) = %v, %v", masterkey.IDs(keys), err)
	}
	// The legacy file: 32 raw bytes.
	if keys, err := masterkey.Parse(a); err != nil || len(keys) != 1 || !bytes.Equal(keys[0].Secret, a) {
		t.Errorf("ParseMasterKeys(raw) = %v, %v", masterkey.IDs(keys), err)
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
		"repeated":      {string(masterkey.Format(keysOf(a, a))), "repeats master key " + masterkey.ID(a)},
		"raw 31 bytes":  {string(bytes.Repeat([]byte{0}, 31)), "neither a 32-byte key nor a keyring"},
	} {
		if _, err := masterkey.Parse([]byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseMasterKeys = %v, want an error containing %q", name, err, tc.want)
		}
	}
	if len(masterkey.ID(a)) != 16 {
		t.Errorf("ID = %s, want 16 hex digits", masterkey.ID(a))
	}
}

func TestMasterKeyFileFormats(t *testing.T) {
	dir := t.TempDir()
	// A legacy file of 32 raw bytes still loads, as one key.
	legacy := filepath.Join(dir, "legacy.key")
	a := newMasterKey(t)
	os.WriteFile(legacy, a, 0o600)
	keys, created, err := masterkey.LoadOrCreate(legacy)
	if err != nil || created || len(keys) != 1 || !bytes.Equal(keys[0].Secret, a) {
		t.Fatalf("LoadOrCreateMasterKeys(legacy) = %v, %v, %v", masterkey.IDs(keys), created, err)
	}
	// A new file is a keyring of one key.
	path := filepath.Join(dir, "master.key")
	keys, created, err = masterkey.LoadOrCreate(path)
	if err != nil || !created || len(keys) != 1 {
		t.Fatalf("LoadOrCreateMasterKeys(new) = %d keys, %v, %v", len(keys), created, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), base64.RawURLEncoding.EncodeToString(keys[0].Secret)+"\n") {
		t.Errorf("the new file is not a keyring:\n%s", data)
	}
	// WriteMasterKeys replaces it atomically, 0600, newest first, leaving no temporary file.
	b := newMasterKey(t)
	if err := masterkey.Write(path, keysOf(b, keys[0].Secret)); err != nil {
		t.Fatal(err)
	}
	got, err := masterkey.Read(path)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0].Secret, b) || !bytes.Equal(got[1].Secret, keys[0].Secret) {
		t.Fatalf("ReadMasterKeys after WriteMasterKeys = %v, %v", masterkey.IDs(got), err)
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
		if _, err := masterkey.Read(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %v accepted: %v", mode, err)
		}
	}
	if err := masterkey.Write(path, nil); err == nil {
		t.Error("WriteMasterKeys with no key succeeded")
	}
}

func TestMasterKeyringSeal(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	plain := []byte("pkcs8 bytes of a private key")
	sealed, err := mustRing(t, a).Seal(plain, []byte("kid1"))
	if err != nil {
		t.Fatal(err)
	}
	if masterkey.SealedBy(sealed) != masterkey.ID(a) || bytes.Contains(sealed, plain) {
		t.Fatalf("SealedBy = %q, want %s", masterkey.SealedBy(sealed), masterkey.ID(a))
	}
	// Any key of the ring opens it; a ring without its key does not.
	for _, ring := range []*masterkey.Keyring{mustRing(t, a), mustRing(t, b, a)} {
		if got, err := ring.Open(sealed, []byte("kid1")); err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, %v", got, err)
		}
	}
	if _, err := mustRing(t, b).Open(sealed, []byte("kid1")); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("Open without its key: %v", err)
	}
	// The kid and the header are bound to the blob.
	if _, err := mustRing(t, a).Open(sealed, []byte("kid2")); err == nil {
		t.Error("a blob opened for another kid")
	}
	swapped := bytes.Clone(sealed)
	copy(swapped[1:9], []byte(masterkey.SealedBy(sealed))[:8]) // another id
	if _, err := mustRing(t, a).Open(swapped, []byte("kid1")); err == nil {
		t.Error("a blob with another header opened")
	}

	// Reseal moves it to the newest key; resealing again changes nothing.
	ring := mustRing(t, b, a)
	resealed, err := ring.Reseal(sealed, []byte("kid1"))
	if err != nil || masterkey.SealedBy(resealed) != masterkey.ID(b) {
		t.Fatalf("Reseal: %v, sealed by %s", err, masterkey.SealedBy(resealed))
	}
	if got, err := mustRing(t, b).Open(resealed, []byte("kid1")); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("Open(resealed) with the new key only = %q, %v", got, err)
	}
	if again, err := ring.Reseal(resealed, []byte("kid1")); err != nil || !bytes.Equal(again, resealed) {
		t.Errorf("Reseal of a blob of the newest key changed it (%v)", err)
	}
}

func TestMasterKeyringLegacyBlobs(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	plain := []byte("a private key sealed by an earlier version")
	// Also blobs whose random first byte looks like the version byte of the new form.
	for _, first := range []int{-1, 1} {
		old := legacySeal(t, a, plain, "kid1", first)
		for _, ring := range []*masterkey.Keyring{mustRing(t, a), mustRing(t, b, a)} {
			if got, err := ring.Open(old, []byte("kid1")); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Open(legacy, first byte %d) = %q, %v", first, got, err)
			}
		}
		if _, err := mustRing(t, b).Open(old, []byte("kid1")); err == nil {
			t.Error("a legacy blob opened with another key")
		}
		if _, err := mustRing(t, a).Open(old, []byte("kid2")); err == nil {
			t.Error("a legacy blob opened for another kid")
		}
		// Resealing a legacy blob gives the new form, even under the same (only) key.
		for _, ring := range []*masterkey.Keyring{mustRing(t, a), mustRing(t, b, a)} {
			newest := ring.KeyIDs()[0]
			resealed, err := ring.Reseal(old, []byte("kid1"))
			if err != nil || masterkey.SealedBy(resealed) != newest {
				t.Fatalf("Reseal(legacy) sealed by %q, %v; want %s", masterkey.SealedBy(resealed), err, newest)
			}
			if got, err := ring.Open(resealed, []byte("kid1")); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("Open(resealed legacy) = %q, %v", got, err)
			}
		}
	}
	if masterkey.SealedBy(legacySeal(t, a, plain, "k", 0)) != "" {
		t.Error("SealedBy of a legacy blob is not empty")
	}
}

func TestMasterKeyringReloadsOnUnknownKey(t *testing.T) {
	a, b := newMasterKey(t), newMasterKey(t)
	sealed, _ := mustRing(t, b, a).Seal([]byte("x"), []byte("kid"))
	ring := mustRing(t, a)
	calls := 0
	ring.OnUnknownKey(func(id string) bool {
		calls++
		if id != masterkey.ID(b) {
			t.Errorf("OnUnknownKey(%s), want %s", id, masterkey.ID(b))
		}
		return false // rate-limited: not reloaded
	})
	if _, err := ring.Open(sealed, []byte("kid")); err == nil || calls != 1 {
		t.Fatalf("Open with a refused reload: %v (%d calls)", err, calls)
	}
	ring.OnUnknownKey(func(string) bool {
		calls++
		return ring.Set(keysOf(b, a)) == nil
	})
	if got, err := ring.Open(sealed, []byte("kid")); err != nil || string(got) != "x" || calls != 2 {
		t.Fatalf("Open after a reload = %q, %v (%d calls)", got, err, calls)
	}
	if ids := ring.KeyIDs(); len(ids) != 2 || ids[0] != masterkey.ID(b) {
		t.Errorf("KeyIDs = %v", ids)
	}
	// A blob of a known key that does not open (corrupted) does not reload.
	bad := bytes.Clone(sealed)
	bad[len(bad)-1] ^= 1
	if _, err := ring.Open(bad, []byte("kid")); err == nil || calls != 2 {
		t.Errorf("Open(corrupted) = %v (%d calls)", err, calls)
	}
}

func TestMasterKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	k1, created, err := masterkey.LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	k2, created, err := masterkey.LoadOrCreate(path)
	if err != nil || created || !bytes.Equal(k1[0].Secret, k2[0].Secret) {
		t.Fatalf("reload: %v %v", created, err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := masterkey.LoadOrCreate(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable master key accepted: %v", err)
	}
}
