package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// Nonces issues and checks stateless server nonces (RFC 9449 §8, §9). A nonce
// is base64url(window counter || truncated HMAC-SHA256(secret, counter)): any
// replica holding the secret can check it without shared state, and it
// bounds how long a pre-computed proof stays usable to at most two periods.
// A nonce from the current or the previous window is valid, so a nonce handed
// out just before a rotation still works for the client's next request.
type Nonces struct {
	key    []byte
	period time.Duration
	now    func() time.Time
}

const (
	nonceMACLen = 16
	nonceLen    = 8 + nonceMACLen
	// nonceLabel separates these MACs from any other use of the same secret.
	nonceLabel = "mandate dpop nonce v1\x00"
	// minNonceSecret is 128 bits: a shorter secret makes nonces forgeable.
	minNonceSecret = 16
)

// NewNonces returns a nonce source that rotates every period. secret must be
// at least 16 random bytes and the same on every replica; now nil means
// time.Now. It panics on a short secret or a non-positive period, since
// either is a configuration mistake that would silently weaken every nonce.
func NewNonces(secret []byte, period time.Duration, now func() time.Time) *Nonces {
	if len(secret) < minNonceSecret {
		panic("dpop: NewNonces: secret must be at least 16 bytes")
	}
	if period <= 0 {
		panic("dpop: NewNonces: period must be positive")
	}
	if now == nil {
		now = time.Now
	}
	return &Nonces{key: append([]byte(nil), secret...), period: period, now: now}
}

func (n *Nonces) window(t time.Time) uint64 {
	return uint64(t.UnixNano() / int64(n.period))
}

func (n *Nonces) mac(counter []byte) []byte {
	m := hmac.New(sha256.New, n.key)
	m.Write([]byte(nonceLabel))
	m.Write(counter)
	return m.Sum(nil)[:nonceMACLen]
}

// Current returns the nonce to send in the DPoP-Nonce response header.
func (n *Nonces) Current() string {
	var buf [nonceLen]byte
	binary.BigEndian.PutUint64(buf[:8], n.window(n.now()))
	copy(buf[8:], n.mac(buf[:8]))
	return b64.EncodeToString(buf[:])
}

// Valid reports whether nonce was issued by this secret in the current or the
// previous window. The MAC comparison is constant-time so response timing
// does not help forge one.
func (n *Nonces) Valid(nonce string) bool {
	if len(nonce) != b64.EncodedLen(nonceLen) {
		return false
	}
	var buf [nonceLen]byte
	if k, err := b64.Strict().Decode(buf[:], []byte(nonce)); err != nil || k != nonceLen {
		return false
	}
	c := binary.BigEndian.Uint64(buf[:8])
	cur := n.window(n.now())
	if c != cur && c != cur-1 {
		return false
	}
	return hmac.Equal(n.mac(buf[:8]), buf[8:])
}
