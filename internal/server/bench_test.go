package server_test

import (
	"crypto/ed25519"
	"net/http"
	"net/url"
	"testing"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// BenchmarkClientCredentials measures token issuance on SQLite end to end over loopback HTTP:
// the client signs an assertion and a DPoP proof, the server checks both, records the assertion
// jti and the audit event, and signs the token. tokens/s is the figure in BENCHMARKS.md.
func BenchmarkClientCredentials(b *testing.B) {
	ts := newTestServer(b)
	a := ts.newAgent(b, "bench-agent", true)
	dpopKey, _ := newKey(b)
	ts.token(b, a, dpopKey, nil) // holds a nonce from here on
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, body := ts.tokenRequest(b, ts.ccForm(b, a, ts.assertion(b, a, randomID())), ts.proof(b, dpopKey, "POST", ts.URL+"/oauth/token", ""))
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("token: %d %v", resp.StatusCode, body)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkHealthz is the baseline for the one above: one loopback HTTP round trip through the
// same middleware, measured in the same run.
func BenchmarkHealthz(b *testing.B) {
	ts := newTestServer(b)
	req, _ := http.NewRequest("GET", ts.URL+"/healthz", nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, _ := ts.do(b, req)
		if resp.StatusCode != http.StatusOK {
			b.Fatal(resp.Status)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// benchExchange measures token exchanges per second over loopback HTTP on the given database:
// each one verifies the subject token, the DPoP proof and (for sub-delegation) the actor token,
// plans the hop, and commits the new task with its audit event in one transaction. Proofs and
// actor tokens are made before the timer starts, so the figure is the server's.
func benchExchange(b *testing.B, delegate bool, edit ...func(*config.Config)) {
	ts := newTestServer(b, edit...)
	rs := "https://api.example.com/"
	orch := ts.newAgent(b, "bench-orch", true)
	res := ts.newAgent(b, "bench-res", true)
	g := ts.grant(b, map[string]any{"agent": "@bench-orch", "scopes": []string{"read", "write"}, "resources": []string{rs},
		"max_depth": 2, "allow_subdelegation": true, "max_task_ttl": 3600, "expires_in": 86400})
	grantTok := ts.grantToken(b, orch, g)
	subject, subjectType, proofKey := grantTok, tokenTypeJWT, orch.Key
	if delegate {
		subject, subjectType = ts.startTask(b, orch, grantTok), tokenTypeAccess
	}
	ts.exchange(b, proofKey, url.Values{"subject_token": {subject}, "subject_token_type": {subjectType}}) // holds a nonce
	forms := make([]url.Values, b.N)
	proofs := make([]string, b.N)
	for i := range forms {
		forms[i] = url.Values{"grant_type": {grantExchange}, "subject_token": {subject}, "subject_token_type": {subjectType}, "scope": {"read"}}
		if delegate {
			forms[i].Set("actor_token", ts.actorToken(b, res.Key, res.DID, nil))
			forms[i].Set("actor_token_type", tokenTypeJWT)
		}
		proofs[i] = ts.proof(b, proofKey, "POST", ts.URL+"/oauth/token", "")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, out := ts.tokenRequest(b, forms[i], proofs[i])
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("exchange: %d %v", resp.StatusCode, out)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "exchanges/s")
}

func BenchmarkExchangeStartSQLite(b *testing.B)    { benchExchange(b, false) }
func BenchmarkExchangeDelegateSQLite(b *testing.B) { benchExchange(b, true) }

func BenchmarkExchangeStartPostgres(b *testing.B) {
	dsn := pgtest.URL(b)
	benchExchange(b, false, func(c *config.Config) { c.Database = dsn })
}

func BenchmarkExchangeDelegatePostgres(b *testing.B) {
	dsn := pgtest.URL(b)
	benchExchange(b, true, func(c *config.Config) { c.Database = dsn })
}

// BenchmarkExchangeSignatures is the baseline for the four above, measured in the same run: the
// signature work one sub-delegation cannot avoid — verify the subject token, the DPoP proof and
// the actor token, and sign the new token (Ed25519).
func BenchmarkExchangeSignatures(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(nil)
	pub := priv.Public().(ed25519.PublicKey)
	msg := make([]byte, 600)
	sig := ed25519.Sign(priv, msg)
	b.ReportAllocs()
	for b.Loop() {
		for range 3 {
			if !ed25519.Verify(pub, msg, sig) {
				b.Fatal("verify")
			}
		}
		ed25519.Sign(priv, msg)
	}
}
