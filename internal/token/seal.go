package token

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// MasterKeySize is the size of the key that wraps every private key at rest (AES-256).
const MasterKeySize = 32

// LoadOrCreateMasterKey reads the master key file, or creates it (mode 0600) with fresh random
// bytes when it does not exist. A file readable by others is refused: it protects every
// signing key.
func LoadOrCreateMasterKey(path string) ([]byte, bool, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key = make([]byte, MasterKeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, false, fmt.Errorf("generate master key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("create master key file %s: %w", path, err)
		}
		if _, err := f.Write(key); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("write master key file %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return nil, false, fmt.Errorf("write master key file %s: %w", path, err)
		}
		return key, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read master key file: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, false, fmt.Errorf("master key file %s is readable by others (mode %v): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if len(key) != MasterKeySize {
		return nil, false, fmt.Errorf("master key file %s holds %d bytes, want %d: restore it from backup", path, len(key), MasterKeySize)
	}
	return key, false, nil
}

// sealer encrypts private keys with AES-256-GCM. The key id is the additional data, so a
// sealed key moved to another row does not open.
type sealer struct{ aead cipher.AEAD }

func newSealer(master []byte) (*sealer, error) {
	block, err := aes.NewCipher(master)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(plain []byte, kid string) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plain, []byte(kid)), nil
}

func (s *sealer) open(sealed []byte, kid string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed key too short")
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(kid))
	if err != nil {
		return nil, fmt.Errorf("open signing key %s: wrong master key or corrupted row: %w", kid, err)
	}
	return plain, nil
}
