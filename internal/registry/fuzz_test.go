package registry_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/didkey"
	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/sqlstore"
)

const issuer = "https://mandate.test"

func newService(t testing.TB) *registry.Service {
	st, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return registry.New(registry.Config{Store: st, Audit: st, JTIs: st, Issuer: issuer,
		ClaimCodeTTL: 15 * time.Minute, KeyGrace: time.Hour})
}

func registration(t testing.TB, seed byte, claims map[string]any) string {
	key := ed25519.NewKeyFromSeed(append(make([]byte, 31), seed))
	did, _ := didkey.Format(key.Public())
	base := map[string]any{"iss": did, "aud": issuer, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(), "jti": "j", "handle": "fuzz-agent"}
	for k, v := range claims {
		base[k] = v
	}
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", did).WithType(registry.TypeRegistration))
	b, _ := json.Marshal(base)
	jws, _ := s.Sign(b)
	out, _ := jws.CompactSerialize()
	return out
}

// FuzzRegister feeds arbitrary bodies to registration, the first thing an unauthenticated
// client reaches: it must answer with a refusal or a registration, never panic, and never
// classify garbage as an internal error.
func FuzzRegister(f *testing.F) {
	f.Add(registration(f, 1, nil))
	f.Add(registration(f, 2, map[string]any{"aud": []string{"x", issuer}}))
	f.Add(registration(f, 3, map[string]any{"exp": "soon"}))
	f.Add(registration(f, 4, map[string]any{"handle": "BAD HANDLE"}))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add(`{"payload":"e30","signatures":[]}`)
	f.Add("")
	svc := newService(f)
	f.Fuzz(func(t *testing.T, body string) {
		_, err := svc.Register(context.Background(), "fuzz", body)
		if err == nil {
			return
		}
		if e, ok := apperr.As(err); !ok || e.Kind == apperr.Internal {
			t.Fatalf("Register(%q) = %v, want a classified refusal", body, err)
		}
	})
}

func TestRegisterRefusals(t *testing.T) {
	svc := newService(t)
	now := time.Now()
	tests := map[string]struct {
		body   string
		reason string
	}{
		"not a JWS":         {"hello", "malformed"},
		"kid not did:key":   {mustSign(t, "kid-1", nil), "kid"},
		"wrong audience":    {registration(t, 10, map[string]any{"aud": "https://elsewhere"}), "aud"},
		"expired":           {registration(t, 11, map[string]any{"exp": now.Add(-time.Minute).Unix()}), "exp"},
		"too long-lived":    {registration(t, 12, map[string]any{"exp": now.Add(10 * time.Minute).Unix()}), "exp"},
		"iat in future":     {registration(t, 13, map[string]any{"iat": now.Add(10 * time.Minute).Unix()}), "iat"},
		"no jti":            {registration(t, 14, map[string]any{"jti": ""}), "jti"},
		"bad handle":        {registration(t, 15, map[string]any{"handle": "-x"}), "handle"},
		"iss is not kid":    {registration(t, 16, map[string]any{"iss": "did:key:someone-else"}), "iss"},
		"signature broken":  {breakSig(registration(t, 17, nil)), "signature"},
		"wrong typ":         {wrongTyp(t), "typ"},
		"kid with fragment": {fragmentKid(t), "kid"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := svc.Register(context.Background(), "t", tt.body)
			if got := apperr.ReasonOf(err); got != tt.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
	t.Run("replayed jti", func(t *testing.T) {
		body := registration(t, 20, map[string]any{"jti": "once", "handle": "replay-a"})
		if _, err := svc.Register(context.Background(), "t", body); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Register(context.Background(), "t", body); apperr.ReasonOf(err) != "replay" {
			t.Fatalf("second use: %v, want replay", err)
		}
	})
	t.Run("DID registered twice", func(t *testing.T) {
		_, err := svc.Register(context.Background(), "t", registration(t, 20, map[string]any{"jti": "twice", "handle": "replay-b"}))
		if e, ok := apperr.As(err); !ok || e.Kind != apperr.Conflict || e.Reason != "did_taken" {
			t.Fatalf("err = %v, want a did_taken conflict", err)
		}
	})
}

func mustSign(t *testing.T, kid string, claims map[string]any) string {
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid).WithType(registry.TypeRegistration))
	jws, _ := s.Sign([]byte(`{}`))
	out, _ := jws.CompactSerialize()
	return out
}

// breakSig replaces the end of the signature, so it no longer verifies.
func breakSig(jws string) string { return jws[:len(jws)-4] + "AAAA" }

// wrongTyp is a valid registration but for its typ: a client assertion must not pass for one.
func wrongTyp(t *testing.T) string {
	key := ed25519.NewKeyFromSeed(append(make([]byte, 31), 30))
	did, _ := didkey.Format(key.Public())
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", did).WithType("JWT"))
	b, _ := json.Marshal(map[string]any{"iss": did, "aud": issuer, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(), "jti": "typ", "handle": "typ-agent"})
	jws, _ := s.Sign(b)
	out, _ := jws.CompactSerialize()
	return out
}

// fragmentKid is a registration whose kid is the signing key's did:key with a "#fragment": the
// same key spelled differently, which must not register a second agent.
func fragmentKid(t *testing.T) string {
	key := ed25519.NewKeyFromSeed(append(make([]byte, 31), 40))
	did, _ := didkey.Format(key.Public())
	alias := did + "#" + strings.TrimPrefix(did, "did:key:")
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", alias).WithType(registry.TypeRegistration))
	b, _ := json.Marshal(map[string]any{"iss": alias, "aud": issuer, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(), "jti": "frag", "handle": "frag-agent"})
	jws, _ := s.Sign(b)
	out, _ := jws.CompactSerialize()
	return out
}

// claimCodeRequest is a request for a new claim code for agentID signed by the key of seed.
func claimCodeRequest(seed byte, typ, agentID string, claims map[string]any) string {
	key := ed25519.NewKeyFromSeed(append(make([]byte, 31), seed))
	did, _ := didkey.Format(key.Public())
	base := map[string]any{"sub": agentID, "aud": issuer, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix(), "jti": "c"}
	for k, v := range claims {
		base[k] = v
	}
	s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", did).WithType(jose.ContentType(typ)))
	b, _ := json.Marshal(base)
	jws, _ := s.Sign(b)
	out, _ := jws.CompactSerialize()
	return out
}

// FuzzNewClaimCode feeds arbitrary bodies to the request for a new claim code, which anyone can
// send for any agent id: it must answer with a refusal or a code, never panic, never classify
// garbage as an internal error, and give a code only to a request signed by the agent's key.
func FuzzNewClaimCode(f *testing.F) {
	svc := newService(f)
	reg, err := svc.Register(context.Background(), "seed", registration(f, 1, map[string]any{"jti": "fuzz-claim-code"}))
	if err != nil {
		f.Fatal(err)
	}
	id := reg.Agent.ID
	f.Add(claimCodeRequest(1, registry.TypeClaimCodeRequest, id, map[string]any{"jti": "seed-ok"}))
	f.Add(claimCodeRequest(2, registry.TypeClaimCodeRequest, id, nil))
	f.Add(claimCodeRequest(1, registry.TypeRegistration, id, map[string]any{"jti": "seed-typ"}))
	f.Add(claimCodeRequest(1, registry.TypeClaimCodeRequest, "agt_other", map[string]any{"jti": "seed-sub"}))
	f.Add(claimCodeRequest(1, registry.TypeClaimCodeRequest, id, map[string]any{"exp": "later"}))
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, body string) {
		got, err := svc.NewClaimCode(context.Background(), "fuzz", id, body)
		if err != nil {
			if e, ok := apperr.As(err); !ok || e.Kind == apperr.Internal {
				t.Fatalf("NewClaimCode(%q) = %v, want a classified refusal", body, err)
			}
			return
		}
		parts := strings.Split(body, ".")
		hdr, _ := jose.ParseSigned(strings.TrimSpace(body), []jose.SignatureAlgorithm{jose.EdDSA})
		if len(parts) != 3 || hdr == nil || hdr.Signatures[0].Protected.KeyID != reg.Agent.Keys[0].DID || got.ClaimCode == "" {
			t.Fatalf("NewClaimCode(%q) gave a code to a request not signed by the agent's key", body)
		}
	})
}

func TestPurgeUnclaimedWithoutGrace(t *testing.T) {
	svc := newService(t) // UnclaimedGrace 0: agents are kept however long ago their code lapsed
	if _, err := svc.Register(context.Background(), "t", registration(t, 50, map[string]any{"jti": "kept", "handle": "kept-forever"})); err != nil {
		t.Fatal(err)
	}
	if n, err := svc.PurgeUnclaimed(context.Background()); n != 0 || err != nil {
		t.Fatalf("PurgeUnclaimed without a grace = %d, %v; want 0", n, err)
	}
}
