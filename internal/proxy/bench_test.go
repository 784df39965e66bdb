package proxy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/httpbench"
	"github.com/mandate-dev/mandate/internal/vault"
)

// The benchmarks compare mandate's proxy (every check: path, token and DPoP proof, task, route,
// budget, credential injection, SSRF-safe dial, audit event) with a plain httputil.ReverseProxy
// to the same local upstream, both over loopback, in one run:
//
//	go test -run '^$' -bench 'PlainReverseProxy|SignatureLimit|Proxy$|VerifyLimit' -benchtime 20000x -count 5 ./internal/proxy/
//
// Each reports req/s and p50/p99 latency. "serial" sends one request at a time (latency);
// "parallel" keeps 4×GOMAXPROCS requests in flight (throughput). Client, proxy and upstream
// share the machine's cores. DPoP proofs are made before the timer starts: signing them is the
// agent's cost, not the proxy's.

var benchBody = []byte(`{"ok":true,"items":[1,2,3],"note":"a small JSON answer of the upstream"}` + "\n")

func benchUpstream(b *testing.B) *httptest.Server {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(benchBody)
	}))
	b.Cleanup(up.Close)
	return up
}

func benchClient(b *testing.B) *http.Client {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	b.Cleanup(c.CloseIdleConnections)
	return c
}

// discardAudit counts events and keeps none.
type discardAudit struct{ n atomic.Int64 }

func (d *discardAudit) AppendEvent(context.Context, audit.Event) error { d.n.Add(1); return nil }
func (d *discardAudit) ListEvents(context.Context, audit.Filter) ([]audit.Event, error) {
	return nil, nil
}

// runBench sends b.N requests made by mk(i) and reports req/s, p50 and p99.
func runBench(b *testing.B, client *http.Client, mk func(i int) *http.Request) {
	httpbench.Run(b, client, mk)
}

func do(b *testing.B, c *http.Client, r *http.Request) { httpbench.Do(b, c, r) }

// plainReverseProxy is httputil.ReverseProxy to a new bench upstream, with no checks.
func plainReverseProxy(b *testing.B) *httputil.ReverseProxy {
	up := benchUpstream(b)
	target, _ := url.Parse(up.URL)
	return &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
	}
}

// BenchmarkPlainReverseProxy is the baseline: httputil.ReverseProxy to the same upstream.
func BenchmarkPlainReverseProxy(b *testing.B) {
	rp := plainReverseProxy(b)
	srv := httptest.NewServer(rp)
	b.Cleanup(srv.Close)
	client := benchClient(b)
	e := newEnv(b)
	tok := e.token(tokenOpts{scope: "api:read"})
	proof, _ := dpop.NewProof(e.agent, "GET", srv.URL+"/v3/site-explorer/overview", dpop.ProofOptions{AccessToken: tok})
	runBench(b, client, func(int) *http.Request {
		r, _ := http.NewRequest("GET", srv.URL+"/v3/site-explorer/overview?target=example.com", nil)
		r.Header.Set("Authorization", "DPoP "+tok) // the same request bytes as through mandate
		r.Header.Set("DPoP", proof)
		return r
	})
}

// BenchmarkSignatureLimit is the per-request signature-verification limit of an HTTP proxy on
// these cores: the plain reverse proxy of BenchmarkPlainReverseProxy, plus the one Ed25519 check
// of the request's fresh DPoP proof that no cache can skip (the token's own signature is checked
// once per token, as the proxy's token cache does). Nothing else is checked. The target is
// BenchmarkProxy ≥ 80% of the lower of this and the plain reverse proxy.
func BenchmarkSignatureLimit(b *testing.B) {
	rp := plainReverseProxy(b)
	e := newEnv(b)
	pub := e.agent.Public().(ed25519.PublicKey)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proof := r.Header.Get("DPoP")
		dot := strings.LastIndexByte(proof, '.')
		sig, err := base64.RawURLEncoding.DecodeString(proof[dot+1:])
		if err != nil || !ed25519.Verify(pub, []byte(proof[:dot]), sig) {
			http.Error(w, "bad proof", http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	b.Cleanup(srv.Close)
	client := benchClient(b)
	tok := e.token(tokenOpts{scope: "api:read"})
	u := srv.URL + "/v3/site-explorer/overview?target=example.com"
	runBench(b, client, func(int) *http.Request {
		r, _ := http.NewRequest("GET", u, nil)
		e.sign(r, tok)
		return r
	})
}

// BenchmarkProxy is the full proxy with in-memory fakes of the vault and task store.
func BenchmarkProxy(b *testing.B) {
	up := benchUpstream(b)
	e := newEnv(b, envOpts{cfg: func(c *Config) { c.Audit = &discardAudit{} }})
	e.upstreams.put(vault.Upstream{Name: "bench", BaseURL: up.URL, Auth: vault.AuthHeader, Param: "X-Api-Key", AllowPrivate: true,
		Routes: []vault.Route{
			{Scope: "bench:write", Methods: []string{"POST"}, Paths: []string{"/v3/batch"}},
			{Scope: "bench:read", Methods: []string{"GET"}, Paths: []string{"/v3/site-explorer/*"}},
		}})
	e.tasks.put(delegation.Task{ID: "tsk_bench", Status: delegation.TaskActive, ExpiresAt: time.Now().Add(time.Hour),
		Budget: map[string]int64{"calls": 1 << 62, "calls:bench": 1 << 62}})
	tok := e.token(tokenOpts{scope: "bench:read", upstream: "bench", task: "tsk_bench"})
	path := "/proxy/bench/v3/site-explorer/overview?target=example.com"
	u := e.issuer + path
	client := benchClient(b)
	do(b, client, e.request("GET", path, tok, nil)) // build the verifier and the pool
	runBench(b, client, func(int) *http.Request {
		r, _ := http.NewRequest("GET", u, nil)
		e.sign(r, tok)
		return r
	})
}

// BenchmarkVerifyLimit is signature verification alone: verify.Verifier.Verify of a token and a
// fresh proof (two Ed25519 checks) on every core, without HTTP — the crypto ceiling, for scale.
// On cores shared with HTTP it is not a bound by itself; BenchmarkSignatureLimit is.
func BenchmarkVerifyLimit(b *testing.B) {
	e := newEnv(b)
	v, err := e.proxy.verifier("api")
	if err != nil {
		b.Fatal(err)
	}
	tok := e.token(tokenOpts{scope: "api:read"})
	reqs := make([]*http.Request, b.N)
	for i := range reqs {
		reqs[i] = e.request("GET", "/proxy/api/items/1", tok, nil)
	}
	var next atomic.Int64
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := v.Verify(ctx, reqs[next.Add(1)-1]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "cores")
}

// BenchmarkBodyRules is step 7 alone on a typical checked call (headers, query, a 300-byte
// body, five rules, a detail with globs): its cost beside the call's (BenchmarkProxy).
func BenchmarkBodyRules(b *testing.B) {
	e := newEnv(b)
	rules := []vault.BodyRule{
		{Detail: "recipient_domains", Pointer: "/to", Match: MatchEmailDomain},
		{Detail: "recipient_domains", Pointer: "/cc", Match: MatchEmailDomain},
		{Detail: "from", Pointer: "/from", Match: MatchEquals},
		{Detail: "subject_prefix", Pointer: "/subject", Match: MatchPrefix},
		{Detail: "max_amount", Pointer: "/items/*/amount", Match: MatchMax},
	}
	details := detailsOfType([]json.RawMessage{json.RawMessage(`{"type":"api","recipient_domains":["example.com","*.corp.example"],"from":["alerts@example.com","bot-7@example.com"],"subject_prefix":"[bot] ","max_amount":100}`)}, "api")
	body := []byte(`{"to":["Ann <ann@example.com>","b@x.corp.example"],"cc":"c@example.com","from":"bot-7@example.com","subject":"[bot] weekly report","text":"` + strings.Repeat("lorem ipsum ", 12) + `","items":[{"amount":10},{"amount":99.5}]}`)
	for b.Loop() {
		r, _ := http.NewRequest("POST", "http://mandate.test/proxy/api/emails?dry_run=1", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json; charset=utf-8")
		if e := e.proxy.checkBody(r, rules, details, "/emails", -1); e != nil {
			b.Fatal(e.desc)
		}
	}
}
