package masterkey

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
)

// Sealed blobs. A blob sealed by a keyring is
//
//	blob = version (1 byte) || master key id (8 bytes) || nonce || AES-256-GCM(master key, plain, header || "|" || aad)
//
// with header = version || key id, so that the blob names the master key that sealed it and a
// blob given another header or moved to another row (aad) does not open. The signing keys'
// private keys are sealed so (aad = kid); the vault's envelopes begin with their data key
// sealed so (aad = upstream/kind), followed by the secret under that data key.
//
// Signing keys sealed by versions before keyrings have no header (nonce || AES-256-GCM(master
// key, plain, aad)); they still open, with whichever key sealed them, and a re-wrap re-seals
// them in the current form.
const (
	sealV1    byte = 1
	header1        = 1 + idSize
	nonceSize      = 12
	tagSize        = 16
	// Overhead is how much longer a blob is than what it seals.
	Overhead = header1 + nonceSize + tagSize
)

// ErrSealed is returned (wrapped) when a blob does not open: a wrong or missing master key, a
// corrupted row, or a blob moved to another row. It never says more than the key id.
var ErrSealed = errors.New("sealed blob does not open")

// UnknownKeyError says that a blob names a master key the keyring does not hold. It wraps
// ErrSealed.
type UnknownKeyError struct{ ID string }

func (e *UnknownKeyError) Error() string {
	return fmt.Sprintf("sealed by master key %s, which the master key file does not hold (wrong master key file or corrupted row)", e.ID)
}

func (e *UnknownKeyError) Unwrap() error { return ErrSealed }

type ringKey struct {
	id     [idSize]byte
	aead   cipher.AEAD
	staged bool
}

// Keyring holds the master keys, newest first: the primary (the first not staged) seals, and
// every key opens what it sealed. It never exposes a key. It is safe for concurrent use, and
// Set replaces its keys while it is in use (File reloads the master key file on SIGHUP, and
// when it meets a blob sealed by a key the keyring does not hold).
type Keyring struct {
	keys      atomic.Pointer[[]ringKey]
	onUnknown atomic.Pointer[func(id string) bool]
}

// NewKeyring returns a keyring of 32-byte master keys, newest first, none staged.
func NewKeyring(secrets ...[]byte) (*Keyring, error) {
	keys := make([]Key, len(secrets))
	for i, s := range secrets {
		keys[i] = Key{Secret: s}
	}
	return NewKeyringOf(keys)
}

// NewKeyringOf returns a keyring of keys, newest first.
func NewKeyringOf(keys []Key) (*Keyring, error) {
	r := &Keyring{}
	if err := r.Set(keys); err != nil {
		return nil, err
	}
	return r, nil
}

// Set replaces the keys, newest first. One at least must not be staged.
func (r *Keyring) Set(keys []Key) error {
	if len(Active(keys)) == 0 {
		return errors.New("master keyring: no master key that seals")
	}
	ring := make([]ringKey, 0, len(keys))
	seen := map[[idSize]byte]bool{}
	for i, k := range keys {
		if len(k.Secret) != Size {
			return fmt.Errorf("master key %d holds %d bytes, want %d", i, len(k.Secret), Size)
		}
		block, err := aes.NewCipher(k.Secret)
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("master key: %w", err)
		}
		sum := sha256.Sum256(k.Secret)
		var id [idSize]byte
		copy(id[:], sum[:idSize])
		if seen[id] {
			continue
		}
		seen[id] = true
		ring = append(ring, ringKey{id: id, aead: aead, staged: k.Staged})
	}
	r.keys.Store(&ring)
	return nil
}

// OnUnknownKey sets what to do when a blob names a master key the keyring does not hold: f
// (which should reload the keys and rate-limit itself) reports whether the keyring may now hold
// it, and the blob is tried once more.
func (r *Keyring) OnUnknownKey(f func(id string) bool) { r.onUnknown.Store(&f) }

// KeyIDs returns the ids of the keys, newest first (staged ones too).
func (r *Keyring) KeyIDs() []string {
	ring := *r.keys.Load()
	out := make([]string, len(ring))
	for i, k := range ring {
		out[i] = hex.EncodeToString(k.id[:])
	}
	return out
}

// Primary returns the id of the key that seals.
func (r *Keyring) Primary() string {
	k := primary(*r.keys.Load())
	return hex.EncodeToString(k.id[:])
}

// Holds reports whether the keyring holds the key id (staged or not).
func (r *Keyring) Holds(id string) bool {
	for _, k := range *r.keys.Load() {
		if hex.EncodeToString(k.id[:]) == id {
			return true
		}
	}
	return false
}

func primary(ring []ringKey) ringKey {
	for _, k := range ring {
		if !k.staged {
			return k
		}
	}
	panic("masterkey: a keyring without a primary key") // Set refuses one
}

func withHeader(header, aad []byte) []byte {
	return append(append(bytes.Clone(header), '|'), aad...)
}

// Seal seals plain for aad under the primary key.
func (r *Keyring) Seal(plain, aad []byte) ([]byte, error) {
	return sealWith(primary(*r.keys.Load()), plain, aad)
}

func sealWith(k ringKey, plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := make([]byte, 0, Overhead+len(plain))
	out = append(out, sealV1)
	out = append(out, k.id[:]...)
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plain, withHeader(out[:header1], aad)), nil
}

// blobID returns the key id a blob's header names, if it has the form of a current blob (a
// blob of an earlier version may look like one by chance: its first byte is random).
func blobID(sealed []byte) ([idSize]byte, bool) {
	var id [idSize]byte
	if len(sealed) < Overhead || sealed[0] != sealV1 {
		return id, false
	}
	copy(id[:], sealed[1:header1])
	return id, true
}

// SealedBy returns the id of the master key a sealed blob names, or "" for a blob of an
// earlier version, which names none.
func SealedBy(sealed []byte) string {
	if id, ok := blobID(sealed); ok {
		return hex.EncodeToString(id[:])
	}
	return ""
}

// openWith opens sealed with the keys of ring; it returns the plaintext, the key that opened
// it and whether the blob is of the current form.
func openWith(ring []ringKey, sealed, aad []byte) (plain []byte, by ringKey, current bool, err error) {
	id, headed := blobID(sealed)
	if headed {
		for _, k := range ring {
			if k.id == id {
				n := sealed[header1 : header1+nonceSize]
				if p, err := k.aead.Open(nil, n, sealed[header1+nonceSize:], withHeader(sealed[:header1], aad)); err == nil {
					return p, k, true, nil
				}
				break
			}
		}
	}
	// A blob of an earlier version: no key id, so try each key, the oldest (the only one there
	// was before keyrings) first.
	if len(sealed) >= nonceSize+tagSize {
		for i := len(ring) - 1; i >= 0; i-- {
			k := ring[i]
			if p, err := k.aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], aad); err == nil {
				return p, k, false, nil
			}
		}
	}
	if headed && !ringHas(ring, id) {
		return nil, ringKey{}, false, &UnknownKeyError{ID: hex.EncodeToString(id[:])}
	}
	return nil, ringKey{}, false, fmt.Errorf("%w: wrong master key or corrupted row", ErrSealed)
}

func ringHas(ring []ringKey, id [idSize]byte) bool {
	for _, k := range ring {
		if k.id == id {
			return true
		}
	}
	return false
}

func (r *Keyring) open(sealed, aad []byte) ([]byte, ringKey, bool, error) {
	ring := *r.keys.Load()
	plain, by, current, err := openWith(ring, sealed, aad)
	if err == nil {
		return plain, by, current, nil
	}
	if id, ok := blobID(sealed); ok && !ringHas(ring, id) {
		if f := r.onUnknown.Load(); f != nil && (*f)(hex.EncodeToString(id[:])) {
			return openWith(*r.keys.Load(), sealed, aad)
		}
	}
	return nil, ringKey{}, false, err
}

// Open opens a blob sealed for aad, in either form, by any key of the keyring (reloading the
// keys once, through OnUnknownKey, when it names a key the keyring does not hold). The caller
// clears the result when done with it.
func (r *Keyring) Open(sealed, aad []byte) ([]byte, error) {
	plain, _, _, err := r.open(sealed, aad)
	return plain, err
}

// Reseal re-seals a blob for aad under the primary key, in the current form. A blob that
// already is comes back unchanged (a copy), so re-sealing is idempotent and a re-wrap can be
// resumed: compare with bytes.Equal to know whether anything changed.
func (r *Keyring) Reseal(sealed, aad []byte) ([]byte, error) {
	plain, by, current, err := r.open(sealed, aad)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	p := primary(*r.keys.Load())
	if current && by.id == p.id {
		return bytes.Clone(sealed), nil
	}
	return sealWith(p, plain, aad)
}
