package verify

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
)

var update = flag.Bool("update", false, "rewrite the committed fuzz seed corpus in testdata/fuzz")

// The fuzz verifier lives at a fixed instant with fixed keys, so the committed seeds (a valid
// token and proof among them) keep exercising the deep paths.
var (
	fuzzNow      = time.Unix(1767225600, 0) // 2026-01-01T00:00:00Z
	fuzzAgentKey = ed25519.NewKeyFromSeed(seed32("mandate fuzz agent"))
)

func seed32(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

type allowAll struct{}

func (allowAll) Check(context.Context, *Caller) error { return nil }

const fuzzIssuer = "https://issuer.example"

func fuzzVerifier(t testing.TB) *Verifier {
	issuer := ed25519.NewKeyFromSeed(seed32("mandate fuzz issuer"))
	v, err := New(Config{
		Issuer:   fuzzIssuer,
		Audience: testAudience,
		Keys:     StaticKeys{"k1": issuer.Public()},
		Status:   allowAll{},
		Now:      func() time.Time { return fuzzNow },
		BaseURL:  "https://rs.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fuzzSeeds returns (Authorization, DPoP) pairs: a valid one and near misses.
func fuzzSeeds(t testing.TB) [][2]string {
	issuer := ed25519.NewKeyFromSeed(seed32("mandate fuzz issuer"))
	jkt, err := dpop.Thumbprint(fuzzAgentKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	// A delegated token: usr_fuzz granted agt_orch, which delegated to agt_fuzz.
	claims := map[string]any{
		"iss": fuzzIssuer, "sub": "usr_fuzz", "client_id": "agt_fuzz", "aud": testAudience,
		"scope": "read", "iat": fuzzNow.Unix(), "exp": fuzzNow.Add(5 * time.Minute).Unix(),
		"jti": "tok_fuzz", "cnf": map[string]any{"jkt": jkt},
		"handle": "fuzzer", "did": "did:key:z6MkFuzz", "txn": "tsk_b", "grant": "gr_fuzz",
		"authorization_details": []any{map[string]any{"type": "repo", "actions": []any{"read"}}},
		"act": map[string]any{"sub": "agt_fuzz", "handle": "fuzzer", "did": "did:key:z6MkFuzz", "txn": "tsk_b", "jkt": jkt,
			"act": map[string]any{"sub": "agt_orch", "handle": "orchestrator", "did": "did:key:z6MkOrch", "txn": "tsk_a"}},
	}
	// Near misses in the act chain, validly signed, so the fuzzer mutates from them too.
	variant := func(mod func(c map[string]any)) (string, string) {
		t.Helper()
		c := map[string]any{}
		for k, v := range claims {
			c[k] = v
		}
		mod(c)
		p, _ := json.Marshal(c)
		tok := signCompact(t, issuer, map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"}, p)
		proof, err := dpop.NewProof(fuzzAgentKey, "GET", "https://rs.example/data", dpop.ProofOptions{AccessToken: tok, Now: fuzzNow})
		if err != nil {
			t.Fatal(err)
		}
		return "DPoP " + tok, proof
	}
	selfTok, selfProof := variant(func(c map[string]any) {
		for _, k := range []string{"act", "txn", "grant", "authorization_details"} {
			delete(c, k)
		}
		c["sub"] = "agt_fuzz"
	})
	deep := map[string]any{"sub": "agt_fuzz"}
	for i := 0; i < MaxChainDepth; i++ {
		deep = map[string]any{"sub": "agt_fuzz", "act": deep}
	}
	deepTok, deepProof := variant(func(c map[string]any) { c["act"] = deep })
	noSubTok, noSubProof := variant(func(c map[string]any) {
		c["act"] = map[string]any{"sub": "agt_fuzz", "txn": "tsk_b", "act": map[string]any{"txn": "tsk_a"}}
	})
	txnTok, txnProof := variant(func(c map[string]any) { c["txn"] = "tsk_a" })
	payload, _ := json.Marshal(claims)
	tok := signCompact(t, issuer, map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"}, payload)
	alias := signCompact(t, issuer, map[string]any{"alg": "Ed25519", "typ": "at+jwt", "kid": "k1"}, payload)
	proof, err := dpop.NewProof(fuzzAgentKey, "GET", "https://rs.example/data", dpop.ProofOptions{AccessToken: tok, Now: fuzzNow})
	if err != nil {
		t.Fatal(err)
	}
	aliasProof, err := dpop.NewProof(fuzzAgentKey, "GET", "https://rs.example/data", dpop.ProofOptions{AccessToken: alias, Now: fuzzNow})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	return [][2]string{
		{"DPoP " + tok, proof},
		{"DPoP " + alias, aliasProof},
		{"Bearer " + tok, ""},
		{"dpop   " + tok, proof + "\n" + proof},
		{"DPoP " + parts[0] + "." + parts[1] + ".", proof},
		{"DPoP " + parts[0] + "..", "a.b.c"},
		{"DPoP eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJub25lIn0.e30."},
		{"DPoP " + strings.Repeat("A", 100), strings.Repeat(".", 10)},
		{"DPoP", ""},
		{"", proof},
		{"DPoP \x00\"\\", "\xff\xfe"},
		{selfTok, selfProof},
		{deepTok, deepProof},
		{noSubTok, noSubProof},
		{txnTok, txnProof},
	}
}

// FuzzVerifyToken feeds garbage Authorization and DPoP values to Verify: it must never panic,
// and every refusal must be a well-formed *Error whose challenge cannot break its quotes.
func FuzzVerifyToken(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[0], s[1])
	}
	v := fuzzVerifier(f)
	f.Fuzz(func(t *testing.T, auth, proof string) {
		r, err := http.NewRequest("GET", "https://rs.example/data", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			r.Header["Authorization"] = []string{auth}
		}
		if proof != "" {
			// A newline separates several DPoP header values.
			r.Header["Dpop"] = strings.Split(proof, "\n")
		}
		c, err := v.Verify(context.Background(), r)
		if err == nil {
			if c == nil || c.JKT == "" || c.Subject == "" {
				t.Fatalf("accepted without a complete caller: %+v", c)
			}
			if n := len(c.Chain); n == 0 || n > MaxChainDepth || c.Chain[n-1].AgentID != c.ClientID || c.AgentID != c.ClientID {
				t.Fatalf("accepted with a chain that does not end with the client: %+v", c)
			}
			return
		}
		e, ok := err.(*Error)
		if !ok {
			t.Fatalf("error %T is not *Error", err)
		}
		if e.Code == "" || e.Reason == "" || e.Description == "" || e.Status < 400 {
			t.Fatalf("incomplete refusal %+v", e)
		}
		ch := e.challenge().String()
		if strings.Count(ch, `"`)%2 != 0 || strings.ContainsAny(ch, "\r\n\\") {
			t.Fatalf("challenge %q is not safely quoted", ch)
		}
		if c := e.Caller; c != nil && (c.JKT == "" || c.Subject == "" || len(c.Chain) == 0 || c.Chain[len(c.Chain)-1].AgentID != c.ClientID) {
			t.Fatalf("refusal %q names an incomplete caller: %+v", e.Reason, c)
		}
		if len(auth) > 20 && strings.Contains(ch, strings.TrimPrefix(auth, "DPoP ")) {
			t.Fatalf("challenge echoes the token")
		}
	})
}

// TestFuzzSeedCorpus keeps testdata/fuzz/FuzzVerifyToken in step with fuzzSeeds (go test -run
// TestFuzzSeedCorpus -update rewrites it).
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzVerifyToken")
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range fuzzSeeds(t) {
			body := fmt.Sprintf("go test fuzz v1\nstring(%q)\nstring(%q)\n", s[0], s[1])
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("no committed seed corpus in %s (run with -update): %v", dir, err)
	}
}

// TestFuzzSeedsAccepted checks that the valid seeds (a delegated token with two aliases of its
// alg, and a self token) are accepted, so the fuzzer starts from inputs that reach every step.
func TestFuzzSeedsAccepted(t *testing.T) {
	seeds := fuzzSeeds(t)
	for i, s := range [][2]string{seeds[0], seeds[1], seeds[11]} {
		v := fuzzVerifier(t)
		r, _ := http.NewRequest("GET", "https://rs.example/data", nil)
		r.Header.Set("Authorization", s[0])
		r.Header.Set("DPoP", s[1])
		if _, err := v.Verify(context.Background(), r); err != nil {
			t.Errorf("seed %d: %v", i, err)
		}
	}
	for i, s := range seeds[12:] {
		v := fuzzVerifier(t)
		r, _ := http.NewRequest("GET", "https://rs.example/data", nil)
		r.Header.Set("Authorization", s[0])
		r.Header.Set("DPoP", s[1])
		if _, err := v.Verify(context.Background(), r); err == nil || err.(*Error).Reason != ReasonClaims {
			t.Errorf("act seed %d: err = %v, want a claims refusal", 12+i, err)
		}
	}
}
