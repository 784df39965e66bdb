package server_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/mandate-dev/mandate/internal/httpbench"
)

// BenchmarkProxySQLite is a proxied GET through the whole server — middleware, token and
// proof, task, route, budget-free grant, credential injection, and the audit trail in the real
// SQLite store (since the fail-closed proxy: a durable pending record before the call leaves
// and a completion after it) — to a loopback upstream; "plain" is httputil.ReverseProxy to the
// same upstream in the same run, the baseline of the ratio:
//
//	go test -run '^$' -bench ProxySQLite -benchtime 3000x -count 3 ./internal/server/
//
// "serial" sends one request at a time; "parallel" keeps 4×GOMAXPROCS in flight.
func BenchmarkProxySQLite(b *testing.B) {
	key := "sk_live_bench_" + randomID()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, "bad key", http.StatusUnauthorized)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true,"items":[1,2,3],"note":"a small JSON answer of the upstream"}`)
	}))
	b.Cleanup(up.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	b.Cleanup(client.CloseIdleConnections)

	b.Run("plain", func(b *testing.B) {
		target, _ := url.Parse(up.URL)
		srv := httptest.NewServer(&httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Header.Set("Authorization", "Bearer "+key)
			},
			Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
		})
		b.Cleanup(srv.Close)
		httpbench.Run(b, client, func(int) *http.Request {
			r, _ := http.NewRequest("GET", srv.URL+"/v1/items?limit=10", nil)
			return r
		})
	})
	b.Run("mandate", func(b *testing.B) {
		ts := newTestServer(b)
		if resp, out := ts.adminJSON(b, "POST", "/v1/upstreams", map[string]any{
			"name": "items", "base_url": up.URL, "auth": "bearer", "allow_private": true,
			"routes": []map[string]any{{"scope": "items:read", "methods": []string{"GET"}, "paths": []string{"/v1/**"}}},
		}); resp.StatusCode != 201 {
			b.Fatalf("add upstream: %d %v", resp.StatusCode, out)
		}
		if resp, out := ts.adminJSON(b, "PUT", "/v1/upstreams/items/secrets/credential", map[string]string{"secret": key}); resp.StatusCode != 204 {
			b.Fatalf("set secret: %d %v", resp.StatusCode, out)
		}
		a := ts.newAgent(b, "bench-proxy", true)
		g := ts.grant(b, map[string]any{"agent": a.ID, "scopes": []string{"items:read"}, "resources": []string{ts.URL + "/proxy/items"},
			"max_task_ttl": 86400, "max_token_ttl": 3600})
		tok := ts.startTask(b, a, ts.grantToken(b, a, g))
		u := ts.URL + "/proxy/items/v1/items?limit=10"
		httpbench.Run(b, client, func(int) *http.Request { return ts.dpopRequest(b, a.Key, tok, "GET", u, nil) })
	})
}
