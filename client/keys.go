package client

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/didkey"
)

// GenerateKey returns a new Ed25519 agent key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client: generating a key: %w", err)
	}
	return priv, nil
}

// SaveKey writes key (Ed25519 or P-256) to path as a private JWK (JSON) with file mode 0600,
// creating missing parent directories with mode 0700. It refuses to overwrite an existing file.
func SaveKey(path string, key crypto.Signer) error {
	jwk, err := privateJWK(key)
	if err != nil {
		return err
	}
	data, err := jwk.MarshalJSON()
	if err != nil {
		return fmt.Errorf("client: encoding the key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("client: creating the key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("client: %s already exists; refusing to overwrite a key (move it away first if you really mean to replace it)", path)
		}
		return fmt.Errorf("client: creating the key file: %w", err)
	}
	_, werr := f.Write(append(data, '\n'))
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return fmt.Errorf("client: writing the key file: %w", werr)
	}
	return nil
}

// LoadKey reads a private JWK written by SaveKey. It refuses a file that group or others can
// read or write.
func LoadKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("client: reading the key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("client: %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("client: the key file %s is accessible by group or others (mode %04o); run `chmod 600 %s` and try again", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client: reading the key: %w", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("client: %s is not a JWK: %w", path, err)
	}
	if jwk.IsPublic() {
		return nil, fmt.Errorf("client: %s holds a public key; an agent key file must hold the private key", path)
	}
	switch k := jwk.Key.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	}
	return nil, fmt.Errorf("client: %s: unsupported key type %T (want Ed25519 or P-256)", path, jwk.Key)
}

// DID returns the did:key of key's public key.
func DID(key crypto.Signer) (string, error) {
	if key == nil {
		return "", errors.New("client: no key")
	}
	did, err := didkey.Format(key.Public())
	if err != nil {
		return "", fmt.Errorf("client: %w", err)
	}
	return did, nil
}

func privateJWK(key crypto.Signer) (jose.JSONWebKey, error) {
	switch k := key.(type) {
	case ed25519.PrivateKey:
		if len(k) != ed25519.PrivateKeySize {
			return jose.JSONWebKey{}, errors.New("client: malformed Ed25519 private key")
		}
		return jose.JSONWebKey{Key: k, Algorithm: string(jose.EdDSA), Use: "sig"}, nil
	case *ecdsa.PrivateKey:
		if k == nil || k.Curve != elliptic.P256() {
			return jose.JSONWebKey{}, errors.New("client: only P-256 ECDSA keys are supported")
		}
		return jose.JSONWebKey{Key: k, Algorithm: string(jose.ES256), Use: "sig"}, nil
	}
	return jose.JSONWebKey{}, fmt.Errorf("client: cannot save a %T: only Ed25519 and P-256 private keys can be written to a file", key)
}
