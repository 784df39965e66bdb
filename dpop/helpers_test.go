package dpop

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// testNow is the fixed clock of the checker tests.
var testNow = time.Unix(1_700_000_000, 0)

const (
	testMethod = "POST"
	testURL    = "https://as.example.com/token"
)

// testEdKey is deterministic so fuzz seeds stay valid across runs.
var testEdKey = ed25519.NewKeyFromSeed(make([]byte, 32))

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func jwkOf(t testing.TB, pub any) map[string]any {
	t.Helper()
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64.EncodeToString(k)}
	case *ecdsa.PublicKey:
		unc, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(unc[1:33]), "y": b64.EncodeToString(unc[33:])}
	}
	t.Fatalf("jwkOf: unsupported %T", pub)
	return nil
}

func baseHeader(t testing.TB, alg string, pub any) map[string]any {
	return map[string]any{"typ": "dpop+jwt", "alg": alg, "jwk": jwkOf(t, pub)}
}

func baseClaims() map[string]any {
	return map[string]any{"jti": "jti-1", "htm": testMethod, "htu": testURL, "iat": testNow.Unix()}
}

// signRaw builds a compact JWS from arbitrary header and claims, so tests can
// make proofs that NewProof would never produce. key selects the signature:
// ed25519.PrivateKey, *ecdsa.PrivateKey (r||s), []byte (HMAC-SHA256) or nil
// (empty signature).
func signRaw(t testing.TB, key any, header, claims map[string]any) string {
	t.Helper()
	hb, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return signBytes(t, key, hb, cb)
}

func signBytes(t testing.TB, key any, hb, cb []byte) string {
	t.Helper()
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case *ecdsa.PrivateKey:
		d := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	case []byte:
		m := hmac.New(sha256.New, k)
		m.Write([]byte(input))
		sig = m.Sum(nil)
	case nil:
	default:
		t.Fatalf("signRaw: unsupported key %T", key)
	}
	return input + "." + b64.EncodeToString(sig)
}

// acceptAll is a ReplayStore that records nothing, to isolate Check's own
// cost in benchmarks and keep fuzzing from filling memory.
type acceptAll struct{}

func (acceptAll) Use(context.Context, string, time.Time) error { return nil }

func newTestChecker(mod func(*Config)) *Checker {
	store := NewMemoryReplayStore()
	cfg := Config{Replay: store, Now: func() time.Time { return testNow }}
	if mod != nil {
		mod(&cfg)
	}
	return NewChecker(cfg)
}

func readVector(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile("../testdata/vectors/" + name)
	if err != nil {
		t.Fatalf("reading vector: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
}
