package vault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// Envelope encryption. Every secret gets its own random 256-bit data key:
//
//	ciphertext = nonce || AES-256-GCM(data key, secret, aad)
//	wrapped    = the data key sealed by the master keyring for aad (internal/masterkey):
//	             version (1 byte) || master key id (8 bytes) || nonce || AES-256-GCM(master key, data key, header || "|" || aad)
//	blob       = wrapped || ciphertext
//
// with aad = upstream + "/" + kind, so a blob copied to another row does not open, and header =
// version || key id, so the header cannot be swapped either. The key id (the first 8 bytes of
// SHA-256 of the master key) tells which master key wrapped the data key: rotating the master
// key re-wraps data keys (Rewrap) without touching any ciphertext.

const (
	envelopeV1  byte = 1
	keyIDSize        = 8
	dataKeySize      = 32
	nonceSize        = 12
	tagSize          = 16
	headerSize       = 1 + keyIDSize
	wrappedSize      = headerSize + nonceSize + dataKeySize + tagSize
	// minBlob is the size of the blob of an empty secret.
	minBlob = wrappedSize + nonceSize + tagSize
)

// ErrSealed is returned (wrapped) when a blob does not open: a wrong or missing master key, a
// corrupted row, or a blob moved to another upstream or kind. It never says more.
var ErrSealed = errors.New("sealed secret does not open")

// MasterKeys is what envelope encryption needs of the master keyring (masterkey.Keyring): it
// seals a data key under its primary master key, opens one sealed by any key it holds, and
// re-seals one under its primary key (returning a copy when it already is).
type MasterKeys interface {
	Seal(plain, aad []byte) ([]byte, error)
	Open(sealed, aad []byte) ([]byte, error)
	Reseal(sealed, aad []byte) ([]byte, error)
}

// Envelopes seals and opens upstream secrets under data keys wrapped by master keys.
type Envelopes struct{ keys MasterKeys }

// NewEnvelopes returns envelopes wrapped by keys.
func NewEnvelopes(keys MasterKeys) *Envelopes { return &Envelopes{keys: keys} }

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func aadOf(upstream, kind string) []byte { return []byte(upstream + "/" + kind) }

// Seal encrypts secret for the row (upstream, kind) under a fresh data key wrapped by the
// primary master key.
func (e *Envelopes) Seal(upstream, kind string, secret []byte) ([]byte, error) {
	dk := make([]byte, dataKeySize)
	defer clear(dk)
	if _, err := rand.Read(dk); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aad := aadOf(upstream, kind)
	wrapped, err := e.keys.Seal(dk, aad)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if len(wrapped) != wrappedSize || wrapped[0] != envelopeV1 {
		return nil, errors.New("seal: the master keyring wraps data keys in an unknown form")
	}
	blob := make([]byte, 0, minBlob+len(secret))
	blob = append(blob, wrapped...)
	data, err := newGCM(dk)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	blob = append(blob, nonce...)
	return data.Seal(blob, nonce, secret, aad), nil
}

// unwrap checks the blob's form and returns the data key and the ciphertext.
func (e *Envelopes) unwrap(blob, aad []byte) (dk, ct []byte, err error) {
	if len(blob) < minBlob || blob[0] != envelopeV1 {
		return nil, nil, fmt.Errorf("%w: unknown format", ErrSealed)
	}
	dk, err = e.keys.Open(blob[:wrappedSize], aad)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the data key does not unwrap: %v", ErrSealed, err)
	}
	if len(dk) != dataKeySize {
		clear(dk)
		return nil, nil, fmt.Errorf("%w: the data key does not unwrap", ErrSealed)
	}
	return dk, blob[wrappedSize:], nil
}

// CanOpen reports (nil) whether the data key of a blob of the row (upstream, kind) unwraps with
// a key of the keyring, without decrypting the secret: a master key can be dropped once every
// blob passes CanOpen on a keyring without it.
func (e *Envelopes) CanOpen(upstream, kind string, blob []byte) error {
	dk, _, err := e.unwrap(blob, aadOf(upstream, kind))
	clear(dk)
	return err
}

// Open decrypts a blob sealed for the row (upstream, kind). The caller clears the result when
// done with it.
func (e *Envelopes) Open(upstream, kind string, blob []byte) ([]byte, error) {
	aad := aadOf(upstream, kind)
	dk, ct, err := e.unwrap(blob, aad)
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

// Rewrap re-wraps the data key of a blob of the row (upstream, kind) under the primary master
// key, leaving the ciphertext as it is. A blob already wrapped by the primary key comes back
// unchanged (so rewrapping is idempotent and a rotation can be resumed).
func (e *Envelopes) Rewrap(upstream, kind string, blob []byte) ([]byte, error) {
	aad := aadOf(upstream, kind)
	dk, ct, err := e.unwrap(blob, aad) // the whole envelope must be of the row, not just its key
	clear(dk)
	if err != nil {
		return nil, err
	}
	wrapped, err := e.keys.Reseal(blob[:wrappedSize], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSealed, err)
	}
	if bytes.Equal(wrapped, blob[:wrappedSize]) {
		return bytes.Clone(blob), nil
	}
	if len(wrapped) != wrappedSize {
		return nil, errors.New("rewrap: the master keyring wraps data keys in an unknown form")
	}
	return append(wrapped, ct...), nil
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
