// Package ids makes the prefixed random identifiers (agt_…, usr_…, evt_…) and secrets used
// across mandate.
package ids

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"strings"
)

var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

// New returns prefix + "_" + 26 characters of base32 randomness (128 bits), lower case.
func New(prefix string) string {
	return prefix + "_" + strings.ToLower(enc.EncodeToString(random(16)))
}

// Secret returns prefix + "_" + 256 random bits, for bearer secrets shown once (API tokens).
func Secret(prefix string) string {
	return prefix + "_" + strings.ToLower(enc.EncodeToString(random(32)))
}

// Hash is how secrets are stored and looked up: hex SHA-256. Lookups by hash are constant in time
// with respect to the secret's content because the database compares digests, not secrets.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

func random(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("ids: crypto/rand failed: " + err.Error()) // never happens on supported platforms
	}
	return b
}
