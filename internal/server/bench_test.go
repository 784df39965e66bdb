package server_test

import (
	"net/http"
	"testing"
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
