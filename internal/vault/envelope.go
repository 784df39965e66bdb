package vault

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

// Envelope encryption. Every secret gets its own random 256-bit data key:
//
//	ciphertext = nonce || AES-256-GCM(data key, secret, aad)
//	wrapped    = nonce || AES-256-GCM(master key, data key, header || aad)
//	blob       = version (1 byte) || master key id (8 bytes) || wrapped || ciphertext
//
// with aad = upstream + "/" + kind, so a blob copied to another row does not open, and header =
// version || key id, so the header cannot be swapped either. The key id (the first 8 bytes of
// SHA-256 of the master key) tells which master key of a Keyring wrapped the data key: rotating
// the master key re-wraps data keys (Rewrap) without touching any ciphertext.

const (
	envelopeV1  byte = 1
	keyIDSize        = 8
	dataKeySize      = 32
	nonceSize        = 12
	tagSize          = 16
	headerSize       = 1 + keyIDSize
	wrappedSize      = nonceSize + dataKeySize + tagSize
	// minBlob is the size of the blob of an empty secret.
	minBlob = headerSize + wrappedSize + nonceSize + tagSize
)

// ErrSealed is returned (wrapped) when a blob does not open: a wrong or missing master key, a
// corrupted row, or a blob moved to another upstream or kind. It never says more.
var ErrSealed = errors.New("sealed secret does not open")

// KeyID is the id of a master key: the first 8 bytes of its SHA-256, in hex. It is safe to log.
func KeyID(master []byte) string {
	id := keyID(master)
	return hex.EncodeToString(id[:])
}

func keyID(master []byte) [keyIDSize]byte {
	sum := sha256.Sum256(master)
	var id [keyIDSize]byte
	copy(id[:], sum[:keyIDSize])
	return id
}

type masterKey struct {
	id   [keyIDSize]byte
	aead cipher.AEAD
}

// Keyring holds the master keys, newest first: the newest wraps every new data key, and any of
// them opens a blob wrapped under it. It never exposes a key. It is safe for concurrent use, and
// Set replaces its keys while it is in use (the server reloads the master key file on SIGHUP,
// and when it meets a blob wrapped by a key it does not hold).
type Keyring struct {
	keys      atomic.Pointer[[]masterKey]
	onUnknown atomic.Pointer[func(id string) bool]
}

// NewKeyring returns a keyring of 32-byte master keys, newest first.
func NewKeyring(masters ...[]byte) (*Keyring, error) {
	k := &Keyring{}
	if err := k.Set(masters...); err != nil {
		return nil, err
	}
	return k, nil
}

// Set replaces the keyring's master keys, newest first.
func (k *Keyring) Set(masters ...[]byte) error {
	if len(masters) == 0 {
		return errors.New("keyring: no master key")
	}
	var keys []masterKey
	seen := map[[keyIDSize]byte]bool{}
	for i, m := range masters {
		if len(m) != 32 {
			return fmt.Errorf("keyring: master key %d holds %d bytes, want 32", i, len(m))
		}
		id := keyID(m)
		if seen[id] {
			continue
		}
		seen[id] = true
		aead, err := newGCM(m)
		if err != nil {
			return fmt.Errorf("keyring: master key %d: %w", i, err)
		}
		keys = append(keys, masterKey{id: id, aead: aead})
	}
	k.keys.Store(&keys)
	return nil
}

// OnUnknownKey sets what to do when a blob names a master key the keyring does not hold: f
// (which should reload the keys and rate-limit itself) reports whether the keyring may now hold
// it, and the blob is tried once more.
func (k *Keyring) OnUnknownKey(f func(id string) bool) { k.onUnknown.Store(&f) }

func (k *Keyring) list() []masterKey { return *k.keys.Load() }

// KeyIDs returns the ids of the keyring's master keys, newest first.
func (k *Keyring) KeyIDs() []string {
	keys := k.list()
	out := make([]string, len(keys))
	for i, m := range keys {
		out[i] = hex.EncodeToString(m.id[:])
	}
	return out
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func aadOf(upstream, kind string) []byte { return []byte(upstream + "/" + kind) }

// Seal encrypts secret for the row (upstream, kind) under a fresh data key wrapped by the newest
// master key.
func (k *Keyring) Seal(upstream, kind string, secret []byte) ([]byte, error) {
	dk := make([]byte, dataKeySize)
	defer clear(dk)
	if _, err := rand.Read(dk); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aad := aadOf(upstream, kind)
	newest := k.list()[0]
	blob := make([]byte, 0, minBlob+len(secret))
	blob = append(blob, envelopeV1)
	blob = append(blob, newest.id[:]...)
	blob, err := appendSealed(blob, newest.aead, dk, wrapAAD(blob[:headerSize], aad))
	if err != nil {
		return nil, err
	}
	data, err := newGCM(dk)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return appendSealed(blob, data, secret, aad)
}

func wrapAAD(header, aad []byte) []byte {
	return append(append(bytes.Clone(header), '|'), aad...)
}

// appendSealed appends nonce || Seal(plain) to dst.
func appendSealed(dst []byte, aead cipher.AEAD, plain, aad []byte) ([]byte, error) {
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	dst = append(dst, nonce...)
	return aead.Seal(dst, nonce, plain, aad), nil
}

// unwrap checks the blob's header and returns the data key, the master key that wrapped it,
// and the ciphertext.
func (k *Keyring) unwrap(blob, aad []byte) (dk []byte, mk masterKey, ct []byte, err error) {
	if len(blob) < minBlob || blob[0] != envelopeV1 {
		return nil, masterKey{}, nil, fmt.Errorf("%w: unknown format", ErrSealed)
	}
	var id [keyIDSize]byte
	copy(id[:], blob[1:headerSize])
	mk, found := k.find(id)
	if !found {
		if f := k.onUnknown.Load(); f != nil && (*f)(hex.EncodeToString(id[:])) {
			mk, found = k.find(id)
		}
	}
	if !found {
		return nil, masterKey{}, nil, fmt.Errorf("%w: wrapped by master key %x, which is not loaded", ErrSealed, id)
	}
	w := blob[headerSize : headerSize+wrappedSize]
	dk, err = mk.aead.Open(nil, w[:nonceSize], w[nonceSize:], wrapAAD(blob[:headerSize], aad))
	if err != nil {
		return nil, masterKey{}, nil, fmt.Errorf("%w: the data key does not unwrap", ErrSealed)
	}
	return dk, mk, blob[headerSize+wrappedSize:], nil
}

func (k *Keyring) find(id [keyIDSize]byte) (masterKey, bool) {
	for _, m := range k.list() {
		if m.id == id {
			return m, true
		}
	}
	return masterKey{}, false
}

// CanOpen reports (nil) whether the data key of a blob of the row (upstream, kind) unwraps with
// a key of the keyring, without decrypting the secret: a master key can be dropped once every
// blob passes CanOpen on a keyring without it.
func (k *Keyring) CanOpen(upstream, kind string, blob []byte) error {
	dk, _, _, err := k.unwrap(blob, aadOf(upstream, kind))
	clear(dk)
	return err
}

// Open decrypts a blob sealed for the row (upstream, kind). The caller clears the result when
// done with it.
func (k *Keyring) Open(upstream, kind string, blob []byte) ([]byte, error) {
	aad := aadOf(upstream, kind)
	dk, _, ct, err := k.unwrap(blob, aad)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	data, err := newGCM(dk)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSealed, err)
	}
	plain, err := data.Open(nil, ct[:nonceSize], ct[nonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: the ciphertext does not open", ErrSealed)
	}
	return plain, nil
}

// Rewrap re-wraps the data key of a blob of the row (upstream, kind) under the newest master
// key, leaving the ciphertext as it is. A blob already wrapped by the newest key comes back
// unchanged (so rewrapping is idempotent and a rotation can be resumed).
func (k *Keyring) Rewrap(upstream, kind string, blob []byte) ([]byte, error) {
	aad := aadOf(upstream, kind)
	dk, mk, ct, err := k.unwrap(blob, aad)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	newest := k.list()[0]
	if mk.id == newest.id {
		return bytes.Clone(blob), nil
	}
	out := make([]byte, 0, len(blob))
	out = append(out, envelopeV1)
	out = append(out, newest.id[:]...)
	out, err = appendSealed(out, newest.aead, dk, wrapAAD(out[:headerSize], aad))
	if err != nil {
		return nil, err
	}
	return append(out, ct...), nil
}

// WrappedBy returns the id of the master key that wrapped blob's data key ("" for a blob that
// is not an envelope), so a rotation can count what is left to re-wrap.
func WrappedBy(blob []byte) string {
	if len(blob) < minBlob || blob[0] != envelopeV1 {
		return ""
	}
	return hex.EncodeToString(blob[1:headerSize])
}

// SealedRow is one stored secret as a master key rotation sees it: the row and its blob as
// stored, and (for a store's RewrapSecrets) the re-wrapped blob to write in its place.
type SealedRow struct {
	Upstream, Kind string
	Sealed         []byte
	New            []byte
}
