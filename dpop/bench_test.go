package dpop

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"testing"
	"time"
)

// BenchmarkEd25519Verify is the floor: one raw Ed25519 verification of a
// message about the size of a proof's signing input.
func BenchmarkEd25519Verify(b *testing.B) {
	msg := make([]byte, 64)
	sig := ed25519.Sign(testEdKey, msg)
	pub := testEdKey.Public().(ed25519.PublicKey)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("verify failed")
		}
	}
}

// BenchmarkCheckEd25519 is a full Check of a fresh proof per iteration; the
// proofs are made before the timer starts and the replay store accepts all,
// so the figure is Check's own cost.
func BenchmarkCheckEd25519(b *testing.B) {
	benchCheck(b, testEdKey)
}

// BenchmarkCheckES256 is the same for P-256 keys.
func BenchmarkCheckES256(b *testing.B) {
	benchCheck(b, newECKey(b))
}

func benchCheck(b *testing.B, key crypto.Signer) {
	proofs := make([]string, b.N)
	for i := range proofs {
		p, err := NewProof(key, testMethod, testURL, ProofOptions{Now: testNow, AccessToken: "tok"})
		if err != nil {
			b.Fatal(err)
		}
		proofs[i] = p
	}
	jkt := mustThumb(b, key.Public())
	c := NewChecker(Config{Replay: acceptAll{}, Now: func() time.Time { return testNow }})
	req := Request{Method: testMethod, URL: testURL, AccessToken: "tok", JKT: jkt}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Check(ctx, proofs[i], req); err != nil {
			b.Fatal(err)
		}
	}
}
