// Package masterkey owns the master keys: the file that holds them, the keyring that seals the
// signing keys' private keys and wraps the vault's data keys with them, its reload (on SIGHUP
// and when a blob names a key it does not hold), and the offline operations on them — adding a
// key (staged, then promoted: two steps for replicas with separate copies of the file), the
// re-wrap of every sealed blob under the primary key, and the pruning of keys nothing needs.
//
// The domain packages use the keyring through their own small interfaces (token.Sealer,
// vault.MasterKeys); the re-wrap reads and writes the database through Store, which the
// composition root provides.
package masterkey

import (
	"bytes"
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
)

// Size is the size of a master key (AES-256).
const Size = 32

// idSize is the size of a key id: the first 8 bytes of the key's SHA-256.
const idSize = 8

// The master key file holds the master keys, newest first. Two formats are read:
//
//   - the keyring, written by this version: text, one base64url (unpadded) 32-byte key per
//     line, newest first; blank lines and lines starting with '#' are ignored. A key on a line
//     "staged <key>" is staged: it opens what it sealed but seals nothing yet (see Promote);
//   - the legacy file of earlier versions: exactly 32 raw bytes, one key.
//
// Either way the file must not be accessible by group or others. The primary key, which seals
// everything new, is the first key that is not staged.
const header = "# mandate master keys, newest first: one base64url AES-256 key per line.\n" +
	"# The first key not marked \"staged\" seals; every key opens what it sealed.\n" +
	"# Keep this file mode 0600 and back it up: it decrypts every signing key and upstream secret.\n"

const stagedPrefix = "staged "

// Key is one master key of the file.
type Key struct {
	Secret []byte
	// Staged keys open what they sealed but seal nothing: a key is staged on every replica
	// before any replica seals with it.
	Staged bool
}

// ID is the key's id (see ID).
func (k Key) ID() string { return ID(k.Secret) }

// ID is the id of a master key: the first 8 bytes of its SHA-256, in hex. Every sealed blob
// names it; it is safe to log and print.
func ID(secret []byte) string {
	sum := sha256.Sum256(secret)
	return hex.EncodeToString(sum[:idSize])
}

// New returns a fresh random key.
func New() (Key, error) {
	k := make([]byte, Size)
	if _, err := rand.Read(k); err != nil {
		return Key{}, fmt.Errorf("generate master key: %w", err)
	}
	return Key{Secret: k}, nil
}

// Active returns the secrets of the keys that are not staged, newest first.
func Active(keys []Key) [][]byte {
	var out [][]byte
	for _, k := range keys {
		if !k.Staged {
			out = append(out, k.Secret)
		}
	}
	return out
}

// IDs returns the ids of keys, in order, a staged one followed by " (staged)".
func IDs(keys []Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID()
		if k.Staged {
			out[i] += " (staged)"
		}
	}
	return out
}

// Clear zeroes the secrets of keys.
func Clear(keys []Key) {
	for _, k := range keys {
		clear(k.Secret)
	}
}

// Parse parses the content of a master key file (either format), newest first.
func Parse(data []byte) ([]Key, error) {
	if len(data) == Size {
		return []Key{{Secret: bytes.Clone(data)}}, nil // the legacy raw file
	}
	var keys []Key
	seen := map[string]bool{}
	active := false
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		staged := false
		if rest, ok := strings.CutPrefix(line, stagedPrefix); ok {
			staged, line = true, strings.TrimSpace(rest)
		}
		key, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(line, "="))
		if err != nil || len(key) != Size {
			clear(key)
			Clear(keys)
			if bytes.ContainsFunc(data, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\r' && r != '\t' }) {
				return nil, fmt.Errorf("it holds %d bytes: neither a %d-byte key nor a keyring", len(data), Size)
			}
			return nil, fmt.Errorf("line %d is not a base64url %d-byte key (or \"staged\" and one)", i+1, Size)
		}
		id := ID(key)
		if seen[id] {
			Clear(keys)
			return nil, fmt.Errorf("line %d repeats master key %s", i+1, id)
		}
		seen[id] = true
		active = active || !staged
		keys = append(keys, Key{Secret: key, Staged: staged})
	}
	if len(keys) == 0 {
		return nil, errors.New("no master key in the file")
	}
	if !active {
		Clear(keys)
		return nil, errors.New("every master key in the file is staged: one must seal (mandate masterkey promote)")
	}
	return keys, nil
}

// Format returns the keyring file content for keys, newest first.
func Format(keys []Key) []byte {
	var b strings.Builder
	b.WriteString(header)
	for _, k := range keys {
		if k.Staged {
			b.WriteString(stagedPrefix)
		}
		b.WriteString(base64.RawURLEncoding.EncodeToString(k.Secret))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Read reads the master key file, newest first. It refuses a file that group or others may
// access. A missing file gives an error wrapping fs.ErrNotExist.
func Read(path string) ([]Key, error) {
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
	keys, err := Parse(buf.Bytes())
	clear(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("master key file %s: %w: restore it from backup", path, err)
	}
	return keys, nil
}

// Write replaces the master key file with a keyring of keys (newest first) atomically: a 0600
// temporary file in the same directory, synced, then renamed over path. A reader sees the old
// file or the new one, never a part.
func Write(path string, keys []Key) (err error) {
	if len(Active(keys)) == 0 {
		return errors.New("write master key file: no key that seals")
	}
	for i, k := range keys {
		if len(k.Secret) != Size {
			return fmt.Errorf("write master key file: key %d holds %d bytes, want %d", i, len(k.Secret), Size)
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
	data := Format(keys)
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

// LoadOrCreate reads the master key file (newest first), or creates it as a keyring of one
// fresh random key (mode 0600) when it does not exist; created says which.
func LoadOrCreate(path string) (keys []Key, created bool, err error) {
	keys, err = Read(path)
	if err == nil {
		return keys, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	key, err := New()
	if err != nil {
		return nil, false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another replica starting at the same time on the same file created it first.
		clear(key.Secret)
		keys, err = Read(path)
		return keys, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("create master key file %s: %w", path, err)
	}
	_, err = f.Write(Format([]Key{key}))
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
	return []Key{key}, true, nil
}
