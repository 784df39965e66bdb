package cli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mandate-dev/mandate/verify"
)

const testIssuer = "http://127.0.0.1:8420"

func b64json(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// signJWT signs header.claims with key: Ed25519 for EdDSA/Ed25519, P-256 for ES256, a byte
// slice for HS256. alg "none" gives an empty signature.
func signJWT(t *testing.T, header, claims map[string]any, key any) string {
	t.Helper()
	input := b64json(t, header) + "." + b64json(t, claims)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case *ecdsa.PrivateKey:
		h := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
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
		t.Fatalf("unsupported key %T", key)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestInspectToken(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := verify.StaticKeys{"ed": edKey.Public(), "ec": ecKey.Public(), "hs": edKey.Public()}

	header := func(alg, kid string) map[string]any {
		return map[string]any{"alg": alg, "kid": kid, "typ": "at+jwt"}
	}
	claims := func(edit func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": testIssuer, "sub": "agt_1", "aud": testIssuer, "scope": "agent", "client_id": "agt_1",
			"jti": "at_1", "cnf": map[string]any{"jkt": "abc"},
			"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(4 * time.Minute).Unix(),
		}
		if edit != nil {
			edit(c)
		}
		return c
	}
	tests := map[string]struct {
		token    string
		sigValid bool
		problems []string
	}{
		"EdDSA":                   {token: signJWT(t, header("EdDSA", "ed"), claims(nil), edKey), sigValid: true},
		"Ed25519 (RFC 9864 name)": {token: signJWT(t, header("Ed25519", "ed"), claims(nil), edKey), sigValid: true},
		"ES256":                   {token: signJWT(t, header("ES256", "ec"), claims(nil), ecKey), sigValid: true},
		"typ application/at+jwt": {
			token:    signJWT(t, map[string]any{"alg": "EdDSA", "kid": "ed", "typ": "application/at+jwt"}, claims(nil), edKey),
			sigValid: true,
		},
		"expired": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) { c["exp"] = now.Add(-3 * time.Minute).Unix() }), edKey),
			sigValid: true,
			problems: []string{"expired 3m ago"},
		},
		"expires exactly now": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) { c["exp"] = now.Unix() }), edKey),
			sigValid: true,
			problems: []string{"expired now"},
		},
		"no exp": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) { delete(c, "exp") }), edKey),
			sigValid: true,
			problems: []string{"no valid exp claim"},
		},
		"not yet valid": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }), edKey),
			sigValid: true,
			problems: []string{"not valid until in 1h"},
		},
		"another issuer": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) { c["iss"] = "https://evil.example" }), edKey),
			sigValid: true,
			problems: []string{`issued by "https://evil.example", not by ` + testIssuer},
		},
		"not an access token": {
			token:    signJWT(t, map[string]any{"alg": "EdDSA", "kid": "ed", "typ": "JWT"}, claims(nil), edKey),
			sigValid: true,
			problems: []string{`typ "JWT": not an access token (at+jwt)`},
		},
		"signed by another key": {
			token:    signJWT(t, header("EdDSA", "ed"), claims(nil), otherKey),
			problems: []string{"signature: the signature does not verify"},
		},
		"ES256 header on an Ed25519 key": {
			token:    signJWT(t, header("ES256", "ed"), claims(nil), ecKey),
			problems: []string{"signature: the signature does not verify"},
		},
		"unknown kid": {
			token:    signJWT(t, header("EdDSA", "nope"), claims(nil), edKey),
			problems: []string{`signature: ` + testIssuer + ` does not publish the signing key "nope"`},
		},
		"no kid": {
			token:    signJWT(t, map[string]any{"alg": "EdDSA", "typ": "at+jwt"}, claims(nil), edKey),
			problems: []string{"signature: the header names no signing key (kid)"},
		},
		"alg none": {
			token:    signJWT(t, header("none", "ed"), claims(nil), nil),
			problems: []string{`signature: algorithm "none" is not accepted (only EdDSA, Ed25519, ES256)`},
		},
		"HMAC with the public key as secret": {
			token:    signJWT(t, header("HS256", "hs"), claims(nil), []byte(edKey.Public().(ed25519.PublicKey))),
			problems: []string{`signature: algorithm "HS256" is not accepted (only EdDSA, Ed25519, ES256)`},
		},
		"crit header": {
			token:    signJWT(t, map[string]any{"alg": "EdDSA", "kid": "ed", "typ": "at+jwt", "crit": []string{"x"}}, claims(nil), edKey),
			problems: []string{"signature: the header has critical parameters (crit) this tool does not understand"},
		},
		"several problems": {
			token: signJWT(t, header("EdDSA", "ed"), claims(func(c map[string]any) {
				c["exp"] = now.Add(-time.Hour).Unix()
			}), otherKey),
			problems: []string{"signature: the signature does not verify", "expired 1h ago"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ins, err := inspectToken(context.Background(), tc.token, testIssuer, keys, now)
			if err != nil {
				t.Fatal(err)
			}
			if ins.Signature.Valid != tc.sigValid {
				t.Errorf("signature valid = %v, want %v (%s)", ins.Signature.Valid, tc.sigValid, ins.Signature.Error)
			}
			if diff := cmp.Diff(tc.problems, ins.Problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if ins.Valid != (len(tc.problems) == 0) {
				t.Errorf("valid = %v with problems %q", ins.Valid, ins.Problems)
			}
		})
	}
}

func TestInspectTokenMalformed(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	good := signJWT(t, map[string]any{"alg": "EdDSA", "kid": "k", "typ": "at+jwt"}, map[string]any{"iss": testIssuer}, key)
	parts := strings.Split(good, ".")
	tests := map[string]string{
		"two parts":          parts[0] + "." + parts[1],
		"four parts":         good + ".x",
		"header not base64":  "!!!." + parts[1] + "." + parts[2],
		"claims not JSON":    parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("[1]")) + "." + parts[2],
		"header null":        base64.RawURLEncoding.EncodeToString([]byte("null")) + "." + parts[1] + "." + parts[2],
		"signature not b64u": parts[0] + "." + parts[1] + ".a+b/",
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := inspectToken(context.Background(), tok, testIssuer, verify.StaticKeys{}, time.Now()); err == nil {
				t.Error("no error")
			}
		})
	}
}

// failingKeys is a KeySource whose fetch fails: inspect must say so, not call the token invalid.
type failingKeys struct{}

func (failingKeys) PublicKey(context.Context, string) (crypto.PublicKey, error) {
	return nil, errors.New("verify: fetching the issuer's JWKS: GET http://127.0.0.1:9/oauth/jwks: status 500")
}

func TestInspectTokenKeysUnavailable(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tok := signJWT(t, map[string]any{"alg": "EdDSA", "kid": "k", "typ": "at+jwt"}, map[string]any{"iss": testIssuer}, key)
	_, err := inspectToken(context.Background(), tok, testIssuer, failingKeys{}, time.Now())
	if err == nil || !strings.Contains(err.Error(), "reading the server's signing keys") {
		t.Errorf("err = %v, want one about reading the keys", err)
	}
}

func TestDelegationChain(t *testing.T) {
	orch := map[string]any{"sub": "agt_o", "handle": "orchestrator", "did": "did:key:z6MkO", "txn": "tsk_a", "jkt": "AbCdEfGhIjKlMn"}
	res := map[string]any{"sub": "agt_r", "handle": "researcher", "did": "did:key:z6MkR", "txn": "tsk_b", "act": orch}
	for name, tc := range map[string]struct {
		claims    map[string]any
		wantChain []chainActor
		wantLine  string
	}{
		"no act": {
			claims: map[string]any{"sub": "usr_1", "client_id": "agt_o"},
		},
		"one agent on an instance key": {
			claims:    map[string]any{"sub": "usr_1", "act": orch},
			wantChain: []chainActor{{AgentID: "agt_o", Handle: "orchestrator", DID: "did:key:z6MkO", Task: "tsk_a", InstanceJKT: "AbCdEfGhIjKlMn"}},
			wantLine:  "usr_1 → @orchestrator (tsk_a, instance AbCdEfGh…)",
		},
		"handed on": {
			claims: map[string]any{"sub": "usr_1", "act": res},
			wantChain: []chainActor{
				{AgentID: "agt_o", Handle: "orchestrator", DID: "did:key:z6MkO", Task: "tsk_a", InstanceJKT: "AbCdEfGhIjKlMn"},
				{AgentID: "agt_r", Handle: "researcher", DID: "did:key:z6MkR", Task: "tsk_b"},
			},
			wantLine: "usr_1 → @orchestrator (tsk_a, instance AbCdEfGh…) → @researcher (tsk_b)",
		},
		"no handle, no task, short jkt": {
			claims:    map[string]any{"sub": "svc_9", "act": map[string]any{"sub": "agt_x", "jkt": "short"}},
			wantChain: []chainActor{{AgentID: "agt_x", InstanceJKT: "short"}},
			wantLine:  "svc_9 → agt_x (instance short)",
		},
		"nothing known": {
			claims:    map[string]any{"act": map[string]any{"act": "not an object"}},
			wantChain: []chainActor{{}},
			wantLine:  "? → ?",
		},
	} {
		t.Run(name, func(t *testing.T) {
			chain := delegationChain(tc.claims)
			if diff := cmp.Diff(tc.wantChain, chain); diff != "" {
				t.Errorf("chain (-want +got):\n%s", diff)
			}
			if len(chain) == 0 {
				return
			}
			sub, _ := tc.claims["sub"].(string)
			if got := chainLine(sub, chain); got != tc.wantLine {
				t.Errorf("line = %q, want %q", got, tc.wantLine)
			}
		})
	}
	// A hostile token cannot make the chain unbounded.
	deep := map[string]any{"sub": "agt_0"}
	for i := 0; i < 100; i++ {
		deep = map[string]any{"sub": "agt", "act": deep}
	}
	if n := len(delegationChain(map[string]any{"act": deep})); n != maxChain {
		t.Errorf("deep chain: %d actors, want %d", n, maxChain)
	}
}
