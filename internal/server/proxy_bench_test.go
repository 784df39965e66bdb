package server_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
)

// BenchmarkProxyCall measures proxied calls end to end through the real server and store
// (SQLite, synchronous=FULL) over loopback HTTP: the proxy checks the DPoP-bound task token and
// its proof, the grant and the route, records the call in the audit trail, injects the
// credential and forwards to a local upstream. "plain" is the baseline in the same run: a bare
// httputil.ReverseProxy to the same upstream. Proofs are made before the timer starts, so the
// figures are the server's. serial is one call at a time; parallel runs 8 goroutines per CPU.
//
// It uses only what every version of the server has, so the same file measures before and after
// a change (BENCHMARKS.md, "Audit: fail closed, group commit").
func BenchmarkProxyCall(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"items":[{"id":1,"name":"one"},{"id":2,"name":"two"}]}`)
	}))
	b.Cleanup(up.Close)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}
	b.Cleanup(hc.CloseIdleConnections)

	run := func(b *testing.B, parallel bool, req func(i int) *http.Request) {
		call := func(i int) {
			resp, err := hc.Do(req(i))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		if !parallel {
			for i := 0; i < b.N; i++ {
				call(i)
			}
		} else {
			var next atomic.Int64
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call(int(next.Add(1) - 1))
				}
			})
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	}

	for _, mode := range proxyBenchModes() {
		b.Run(mode.server+"/"+mode.name, func(b *testing.B) {
			ts := newTestServer(b, mode.config(b)...)
			resp, out := ts.adminJSON(b, "POST", "/v1/upstreams", map[string]any{
				"name": "items", "base_url": up.URL, "auth": "bearer", "allow_private": true,
				"routes": []map[string]any{{"scope": "items:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
			})
			if resp.StatusCode != http.StatusCreated {
				b.Fatalf("add upstream: %d %v", resp.StatusCode, out)
			}
			if resp, out := ts.adminJSON(b, "PUT", "/v1/upstreams/items/secrets/credential", map[string]string{"secret": "sk_bench"}); resp.StatusCode/100 != 2 {
				b.Fatalf("set secret: %d %v", resp.StatusCode, out)
			}
			a := ts.newAgent(b, "bench-proxy", true)
			g := ts.grant(b, map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"},
				"max_task_ttl": 3600, "expires_in": 86400})
			tok := ts.startTask(b, a, ts.grantToken(b, a, g))
			u := ts.URL + "/proxy/items/v1/items?page=1"
			proofs := make([]string, b.N)
			for i := range proofs {
				p, err := dpop.NewProof(a.Key, "GET", u, dpop.ProofOptions{AccessToken: tok, Now: ts.Clock.Now()})
				if err != nil {
					b.Fatal(err)
				}
				proofs[i] = p
			}
			run(b, mode.parallel, func(i int) *http.Request {
				req, _ := http.NewRequest("GET", u, nil)
				req.Header.Set("Authorization", "DPoP "+tok)
				req.Header.Set("DPoP", proofs[i])
				return req
			})
		})
		if mode.server != "mandate" {
			continue // plain is measured once per mode
		}
		b.Run("plain/"+mode.name, func(b *testing.B) {
			target, _ := url.Parse(up.URL)
			rp := httputil.NewSingleHostReverseProxy(target)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &http.Server{Handler: rp}
			go srv.Serve(ln)
			b.Cleanup(func() { srv.Close() })
			u := "http://" + ln.Addr().String() + "/v1/items?page=1"
			run(b, mode.parallel, func(int) *http.Request {
				req, _ := http.NewRequest("GET", u, nil)
				req.Header.Set("Authorization", "Bearer sk_bench")
				return req
			})
		})
	}
}

type proxyBenchMode struct {
	server, name string
	parallel     bool
	postgres     bool
}

// proxyBenchModes are serial and parallel on SQLite ("mandate") and, when MANDATE_TEST_POSTGRES
// is set, on PostgreSQL ("mandate-postgres", a fresh schema per run).
func proxyBenchModes() []proxyBenchMode {
	var modes []proxyBenchMode
	for _, m := range []struct {
		name     string
		parallel bool
	}{{"serial", false}, {"parallel", true}} {
		modes = append(modes, proxyBenchMode{server: "mandate", name: m.name, parallel: m.parallel})
		if os.Getenv(pgtest.EnvVar) != "" {
			modes = append(modes, proxyBenchMode{server: "mandate-postgres", name: m.name, parallel: m.parallel, postgres: true})
		}
	}
	return modes
}

func (m proxyBenchMode) config(b *testing.B) []func(*config.Config) {
	if !m.postgres {
		return nil
	}
	dsn := pgtest.URL(b)
	return []func(*config.Config){func(c *config.Config) { c.Database = dsn }}
}
