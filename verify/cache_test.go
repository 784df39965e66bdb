package verify

import (
	"testing"
	"time"
)

// TestTokenCache: a token verified once is not re-verified on its next use, but expiry,
// revocation and the proof are still checked every time.
func TestTokenCache(t *testing.T) {
	is := newTestIssuer(t)
	res := newAgent(t, "agt_res")
	d := newDirect(t, is)
	claims := is.claims(res)
	claims["exp"] = d.clk.Now().Add(2 * time.Minute).Unix()
	tok := is.mint("k1", "EdDSA", "at+jwt", claims)

	first := d.mustAccept(res, tok, "first use")
	second := d.mustAccept(res, tok, "second use, from the cache")
	if first == second || first.JTI != second.JTI || second.AgentID != "agt_res" {
		t.Fatalf("cached caller %+v: want an equal, separate copy", second)
	}
	if n := len(d.v.cache.m); n != 1 {
		t.Errorf("cache holds %d tokens, want 1", n)
	}

	// Another agent's key cannot ride on the cached token: the proof is checked every time.
	other := newAgent(t, "agt_other")
	if _, e := d.verify(other, tok); e == nil || e.Code != CodeInvalidDPoPProof {
		t.Fatalf("proof by another key with a cached token: %+v, want invalid_dpop_proof", e)
	}
	// Revocation reaches cached tokens.
	is.revoke("token", claims["jti"].(string), claims["exp"].(int64))
	d.clk.Advance(1100 * time.Millisecond)
	if _, e := d.verify(res, tok); e == nil || e.Reason != ReasonRevoked {
		t.Fatalf("revoked cached token: %+v, want revoked", e)
	}
	// Expiry reaches cached tokens.
	tok2 := is.mint("k1", "EdDSA", "at+jwt", func() map[string]any {
		c := is.claims(res)
		c["exp"] = d.clk.Now().Add(time.Minute).Unix()
		return c
	}())
	d.mustAccept(res, tok2, "before expiry")
	d.clk.Advance(2 * time.Minute)
	if _, e := d.verify(res, tok2); e == nil || e.Reason != ReasonExpired {
		t.Fatalf("expired cached token: %+v, want expired", e)
	}
}

func TestTokenCacheBounded(t *testing.T) {
	tc := newTokenCache(8)
	now := time.Now()
	for i := 0; i < 100; i++ {
		tc.put(string(rune('a'+i%26))+time.Duration(i).String(), &Caller{ExpiresAt: now.Add(time.Hour)})
		if len(tc.m) > 8 {
			t.Fatalf("cache grew to %d entries, bound 8", len(tc.m))
		}
	}
	if newTokenCache(-1) != nil {
		t.Error("a negative size must disable the cache")
	}
	var off *tokenCache
	off.put("x", &Caller{})
	if _, ok := off.get("x", now, 0); ok {
		t.Error("a nil cache remembered a token")
	}
}
