package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
)

// MasterKeySize is the size of a key that wraps every private key at rest (AES-256).
const MasterKeySize = 32

// The master key file holds the master keys, newest first. The newest seals everything new; the
// others still open what they sealed, until a rotation has re-wrapped it (mandate vault
// rotate-master-key) and they are pruned. Two formats are read:
//
//   - the keyring, written by this version: text, one base64url (unpadded) 32-byte key per
//     line, newest first; blank lines and lines starting with '#' are ignored;
//   - the legacy file of earlier versions: exactly 32 raw bytes, one key.
//
// Either way the file must not be accessible by group or others.
const keyringHeader = "# mandate master keys, newest first: one base64url AES-256 key per line.\n" +
	"# Keep this file mode 0600 and back it up: it decrypts every signing key and upstream secret.\n"

// ParseMasterKeys parses the content of a master key file (either format), newest first.
func ParseMasterKeys(data []byte) ([][]byte, error) {
	if len(data) == MasterKeySize {
		return [][]byte{bytes.Clone(data)}, nil // the legacy raw file
	}
	var keys [][]byte
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(line, "="))
		if err != nil || len(key) != MasterKeySize {
			if bytes.ContainsFunc(data, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\r' && r != '\t' }) {
				return nil, fmt.Errorf("it holds %d bytes: neither a %d-byte key nor a keyring", len(data), MasterKeySize)
			}
			return nil, fmt.Errorf("line %d is not a base64url %d-byte key", i+1, MasterKeySize)
		}
		id := MasterKeyID(key)
		if seen[id] {
			return nil, fmt.Errorf("line %d repeats master key %s", i+1, id)
		}
		seen[id] = true
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("no master key in the file")
	}
	return keys, nil
}

// FormatMasterKeys returns the keyring file content for keys, newest first.
func FormatMasterKeys(keys [][]byte) []byte {
	var b strings.Builder
	b.WriteString(keyringHeader)
	for _, k := range keys {
		b.WriteString(base64.RawURLEncoding.EncodeToString(k))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// MasterKeyID is the id of a master key: the first 8 bytes of its SHA-256, in hex (the same as
// vault.KeyID). It is safe to log and print.
func MasterKeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:keyIDSize])
}

// ReadMasterKeys reads the master key file, newest first. It refuses a file that group or
// others may access. A missing file gives an error wrapping fs.ErrNotExist.
func ReadMasterKeys(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read master key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read master key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("master key file %s is readable by others (mode %v): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("read master key file: %w", err)
	}
	keys, err := ParseMasterKeys(buf.Bytes())
	clear(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("master key file %s: %w: restore it from backup", path, err)
	}
	return keys, nil
}

// WriteMasterKeys replaces the master key file with a keyring of keys (newest first)
// atomically: a 0600 temporary file in the same directory, synced, then renamed over path. A
// reader sees the old file or the new one, never a part.
func WriteMasterKeys(path string, keys [][]byte) (err error) {
	if len(keys) == 0 {
		return errors.New("write master key file: no key")
	}
	for i, k := range keys {
		if len(k) != MasterKeySize {
			return fmt.Errorf("write master key file: key %d holds %d bytes, want %d", i, len(k), MasterKeySize)
		}
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil { // CreateTemp makes it 0600 already; be explicit
		return fmt.Errorf("write master key file: %w", err)
	}
	data := FormatMasterKeys(keys)
	defer clear(data)
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write master key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}

// LoadOrCreateMasterKeys reads the master key file (newest first), or creates it as a keyring
// of one fresh random key (mode 0600) when it does not exist.
func LoadOrCreateMasterKeys(path string) ([][]byte, bool, error) {
	keys, err := ReadMasterKeys(path)
	if err == nil {
		return keys, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	key := make([]byte, MasterKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, false, fmt.Errorf("generate master key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("create master key file %s: %w", path, err)
	}
	_, err = f.Write(FormatMasterKeys([][]byte{key}))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("write master key file %s: %w", path, err)
	}
	return [][]byte{key}, true, nil
}

// LoadOrCreateMasterKey is LoadOrCreateMasterKeys for callers that use one key: it returns the
// newest.
func LoadOrCreateMasterKey(path string) ([]byte, bool, error) {
	keys, created, err := LoadOrCreateMasterKeys(path)
	if err != nil {
		return nil, false, err
	}
	return keys[0], created, nil
}

// Sealed private keys. A key sealed by this version is
//
//	blob = version (1 byte) || master key id (8 bytes) || nonce || AES-256-GCM(master key, private key, header || "|" || kid)
//
// with header = version || key id, so that the blob names the master key that sealed it and a
// blob moved to another row (kid) or given another header does not open. Blobs of earlier
// versions have no header (nonce || AES-256-GCM(master key, private key, kid)); they still open,
// with whichever key of the keyring sealed them, and a rotation re-seals them in the new form.
const (
	sealV1      byte = 1
	keyIDSize        = 8
	sealHeader       = 1 + keyIDSize
	sealNonce        = 12
	sealTag          = 16
	minSealedV1      = sealHeader + sealNonce + sealTag
)

type ringKey struct {
	id   [keyIDSize]byte
	aead cipher.AEAD
}

// MasterKeyring holds the master keys that seal the signing keys, newest first. It is safe for
// concurrent use, and Set replaces its keys while it is in use (the server reloads the master
// key file on SIGHUP, and when it meets a blob sealed by a key it does not hold).
type MasterKeyring struct {
	keys      atomic.Pointer[[]ringKey]
	onUnknown atomic.Pointer[func(id string) bool]
}

// NewMasterKeyring returns a keyring of 32-byte master keys, newest first.
func NewMasterKeyring(keys ...[]byte) (*MasterKeyring, error) {
	r := &MasterKeyring{}
	if err := r.Set(keys...); err != nil {
		return nil, err
	}
	return r, nil
}

// Set replaces the keys, newest first.
func (r *MasterKeyring) Set(keys ...[]byte) error {
	if len(keys) == 0 {
		return errors.New("master keyring: no master key")
	}
	ring := make([]ringKey, 0, len(keys))
	seen := map[[keyIDSize]byte]bool{}
	for i, k := range keys {
		if len(k) != MasterKeySize {
			return fmt.Errorf("master key %d holds %d bytes, want %d", i, len(k), MasterKeySize)
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		sum := sha256.Sum256(k)
		var id [keyIDSize]byte
		copy(id[:], sum[:keyIDSize])
		if seen[id] {
			continue
		}
		seen[id] = true
		ring = append(ring, ringKey{id: id, aead: aead})
	}
	r.keys.Store(&ring)
	return nil
}

// OnUnknownKey sets what to do when a blob names a master key the keyring does not hold: f
// (which should reload the keys and rate-limit itself) reports whether the keyring may now hold
// it, and the blob is tried once more.
func (r *MasterKeyring) OnUnknownKey(f func(id string) bool) { r.onUnknown.Store(&f) }

// KeyIDs returns the ids of the keys, newest first.
func (r *MasterKeyring) KeyIDs() []string {
	ring := *r.keys.Load()
	out := make([]string, len(ring))
	for i, k := range ring {
		out[i] = hex.EncodeToString(k.id[:])
	}
	return out
}

func sealAAD(header []byte, kid string) []byte {
	return append(append(bytes.Clone(header), '|'), kid...)
}

// Seal seals a private key of the signing key kid under the newest master key.
func (r *MasterKeyring) Seal(plain []byte, kid string) ([]byte, error) {
	return sealWith((*r.keys.Load())[0], plain, kid)
}

func sealWith(k ringKey, plain []byte, kid string) ([]byte, error) {
	nonce := make([]byte, sealNonce)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := make([]byte, 0, minSealedV1+len(plain))
	out = append(out, sealV1)
	out = append(out, k.id[:]...)
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plain, sealAAD(out[:sealHeader], kid)), nil
}

// sealedID returns the key id a blob's header names, if it has the form of a v1 blob (a blob
// of an earlier version may look like one by chance: its first byte is random).
func sealedID(sealed []byte) ([keyIDSize]byte, bool) {
	var id [keyIDSize]byte
	if len(sealed) < minSealedV1 || sealed[0] != sealV1 {
		return id, false
	}
	copy(id[:], sealed[1:sealHeader])
	return id, true
}

// open opens sealed with the keys of ring; it returns the plaintext, the key that opened it and
// whether the blob is of the current form.
func openWith(ring []ringKey, sealed []byte, kid string) (plain []byte, by ringKey, v1 bool, err error) {
	if id, ok := sealedID(sealed); ok {
		for _, k := range ring {
			if k.id == id {
				n := sealed[sealHeader : sealHeader+sealNonce]
				if p, err := k.aead.Open(nil, n, sealed[sealHeader+sealNonce:], sealAAD(sealed[:sealHeader], kid)); err == nil {
					return p, k, true, nil
				}
				break
			}
		}
	}
	// A blob of an earlier version: no key id, so try each key, the oldest (the only one there
	// was before keyrings) first.
	if len(sealed) >= sealNonce+sealTag {
		for i := len(ring) - 1; i >= 0; i-- {
			k := ring[i]
			if p, err := k.aead.Open(nil, sealed[:sealNonce], sealed[sealNonce:], []byte(kid)); err == nil {
				return p, k, false, nil
			}
		}
	}
	if id, ok := sealedID(sealed); ok {
		return nil, ringKey{}, false, fmt.Errorf("open signing key %s: sealed by master key %x, which the master key file does not hold (wrong master key or corrupted row)", kid, id)
	}
	return nil, ringKey{}, false, fmt.Errorf("open signing key %s: wrong master key or corrupted row", kid)
}

func (r *MasterKeyring) open(sealed []byte, kid string) ([]byte, ringKey, bool, error) {
	ring := *r.keys.Load()
	plain, by, v1, err := openWith(ring, sealed, kid)
	if err == nil {
		return plain, by, v1, nil
	}
	if id, ok := sealedID(sealed); ok {
		if f := r.onUnknown.Load(); f != nil && !ringHas(ring, id) && (*f)(hex.EncodeToString(id[:])) {
			return openWith(*r.keys.Load(), sealed, kid)
		}
	}
	return nil, ringKey{}, false, err
}

func ringHas(ring []ringKey, id [keyIDSize]byte) bool {
	for _, k := range ring {
		if k.id == id {
			return true
		}
	}
	return false
}

// Open opens a private key of the signing key kid, sealed in either form by any key of the
// keyring. The caller clears the result when done with it.
func (r *MasterKeyring) Open(sealed []byte, kid string) ([]byte, error) {
	plain, _, _, err := r.open(sealed, kid)
	return plain, err
}

// Reseal re-seals a private key of the signing key kid under the newest master key, in the
// current form. A blob that already is comes back unchanged (so re-sealing is idempotent and a
// rotation can be resumed): compare with bytes.Equal to know whether anything changed.
func (r *MasterKeyring) Reseal(sealed []byte, kid string) ([]byte, error) {
	plain, by, v1, err := r.open(sealed, kid)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	newest := (*r.keys.Load())[0]
	if v1 && by.id == newest.id {
		return bytes.Clone(sealed), nil
	}
	return sealWith(newest, plain, kid)
}

// SealedBy returns the id of the master key whose id a sealed private key names, or "" for a
// blob of an earlier version, which names none.
func SealedBy(sealed []byte) string {
	if id, ok := sealedID(sealed); ok {
		return hex.EncodeToString(id[:])
	}
	return ""
}

// sealer is what Keys seals its private keys with: a keyring that UseMasterKeyring can swap for
// one shared with the rest of the server.
type sealer struct{ ring atomic.Pointer[MasterKeyring] }

func newSealer(master []byte) (*sealer, error) {
	r, err := NewMasterKeyring(master)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	s := &sealer{}
	s.ring.Store(r)
	return s, nil
}

func (s *sealer) seal(plain []byte, kid string) ([]byte, error) {
	return s.ring.Load().Seal(plain, kid)
}

func (s *sealer) open(sealed []byte, kid string) ([]byte, error) {
	return s.ring.Load().Open(sealed, kid)
}

// UseMasterKeyring makes k seal and open its private keys with r (all the keys of the master
// key file, reloadable) instead of the single KeysConfig.MasterKey. Call it before Ensure.
func (k *Keys) UseMasterKeyring(r *MasterKeyring) { k.sealer.ring.Store(r) }

// SealedKey is one stored signing key as a master key rotation sees it: its kid and sealed
// private key as stored, and (for a store's ResealSigningKeys) the re-sealed blob to write in
// its place.
type SealedKey struct {
	KID    string
	Sealed []byte
	New    []byte
}
