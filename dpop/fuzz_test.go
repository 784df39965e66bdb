package dpop

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// fuzzSeeds are valid proofs for the fuzz checker's request and clock, plus
// the RFC 9449 proofs, so mutations start from inputs that reach the deep
// steps instead of dying in the parser.
func fuzzSeeds(f *testing.F) []string {
	f.Helper()
	edPub := testEdKey.Public()
	seeds := []string{
		"",
		"a.b.c",
		"e30.e30.",
		signRaw(f, testEdKey, baseHeader(f, "EdDSA", edPub), baseClaims()),
		signRaw(f, testEdKey, baseHeader(f, "Ed25519", edPub), baseClaims()),
		signRaw(f, testEdKey, baseHeader(f, "EdDSA", edPub), with(baseClaims(), "ath", AccessTokenHash("tok"), "nonce", "n")),
		signRaw(f, nil, baseHeader(f, "none", edPub), baseClaims()),
	}
	if p, err := NewProof(newECKey(f), testMethod, testURL, ProofOptions{Now: testNow}); err == nil {
		seeds = append(seeds, p)
	}
	var v struct {
		Proofs map[string]struct {
			JWT string `json:"jwt_unwrapped"`
		} `json:"proofs"`
	}
	readVector(f, "rfc9449-dpop.json", &v)
	for _, p := range v.Proofs {
		seeds = append(seeds, p.JWT)
	}
	return seeds
}

// FuzzCheck checks that no input makes Check panic or return anything but a
// *Error, and that an accepted proof really is signed by the key it reports.
func FuzzCheck(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	c := NewChecker(Config{Replay: acceptAll{}, Now: func() time.Time { return testNow }})
	req := Request{Method: testMethod, URL: testURL}
	f.Fuzz(func(t *testing.T, proof string) {
		p, err := c.Check(context.Background(), proof, req)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Check returned a non-*Error error: %v", err)
			}
			if e.Code != CodeInvalidProof && e.Code != CodeUseNonce || e.Reason == "" || e.Description == "" {
				t.Fatalf("incomplete Error: %+v", e)
			}
			return
		}
		if p.JKT == "" || p.JTI == "" || p.PublicKey == nil || mustThumb(t, p.PublicKey) != p.JKT {
			t.Fatalf("accepted proof with inconsistent result: %+v", p)
		}
	})
}

// FuzzParseJWS targets the parse step alone: it must never panic, and what
// it accepts must be made of exactly the bytes it was given.
func FuzzParseJWS(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j, rerr := parseJWS(s)
		if rerr != nil {
			if rerr.Reason != "malformed" {
				t.Fatalf("parse refusal with reason %q", rerr.Reason)
			}
			return
		}
		if !strings.HasPrefix(s, j.signingInput+".") || len(s) != len(j.signingInput)+1+len(b64.EncodeToString(j.sig)) {
			t.Fatalf("parse result does not match input")
		}
		_, _ = j.checkHeader()
		_, _ = j.decodeClaims()
	})
}
