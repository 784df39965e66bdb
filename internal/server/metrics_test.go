package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mandate-dev/mandate/dpop"
	"github.com/mandate-dev/mandate/internal/buildinfo"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/server"
)

// scrape reads /metrics at base into its metric families.
func scrape(t *testing.T, hc *http.Client, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s/metrics: %d", base, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// TestMetricsSeriesBounded states the promise of /metrics under hostile clients: whatever
// methods, paths, upstream names, grant types, forms and headers they send, no label value comes
// from the request and every mandate_ family stays within a fixed number of series. (On old
// main, any request method became a label value, so the series grew with every new method.)
func TestMetricsSeriesBounded(t *testing.T) {
	f := newProxyFixture(t, nil)
	ts := f.ts
	rng := rand.New(rand.NewPCG(9, 7))
	const marker = "zq"
	rnd := func() string { return fmt.Sprintf("%s%x", marker, rng.Uint32()) }
	methods := func() string {
		return []string{"GET", "POST", "DELETE", "PROPFIND", strings.ToUpper(rnd()), rnd()}[rng.IntN(6)]
	}
	send := func(method, path string, form url.Values, header http.Header) {
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, ts.URL+path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := ts.HC.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := 0; i < 400; i++ {
		switch rng.IntN(6) {
		case 0: // anywhere
			send(methods(), "/"+rnd()+"/"+rnd(), nil, nil)
		case 1: // management API with made-up ids and tokens
			send(methods(), "/v1/agents/"+rnd(), nil, http.Header{"Authorization": {"Bearer mnd_" + rnd()}})
		case 2: // an upstream that does not exist
			send(methods(), "/proxy/"+rnd()+"/v1/x", nil, http.Header{"Authorization": {"DPoP " + rnd()}, "Dpop": {rnd()}})
		case 3: // the real upstream, any method and path, with and without a valid token
			u := "/proxy/items/v1/" + rnd()
			h := http.Header{"Authorization": {"DPoP " + f.tok}}
			if p, err := dpop.NewProof(f.key, "GET", ts.URL+u, dpop.ProofOptions{AccessToken: f.tok, Now: ts.Clock.Now()}); err == nil && rng.IntN(2) == 0 {
				h.Set("Dpop", p)
			}
			send(methods(), u, nil, h)
		case 4: // the token endpoint with any grant type and garbage
			form := url.Values{"grant_type": {[]string{"client_credentials", grantExchange, rnd()}[rng.IntN(3)]},
				"client_assertion": {rnd()}, "subject_token": {rnd()}, rnd(): {rnd()}}
			send([]string{"POST", methods()}[rng.IntN(2)], "/oauth/token", form, http.Header{"Dpop": {rnd()}})
		case 5: // introspection, revocation, metadata of made-up upstreams
			send("POST", []string{"/oauth/introspect", "/oauth/revoke"}[rng.IntN(2)], url.Values{"token": {rnd()}}, nil)
			send("GET", "/.well-known/oauth-protected-resource/proxy/"+rnd(), nil, nil)
		}
	}

	fams := scrape(t, ts.HC, ts.URL)
	for name, fam := range fams {
		if !strings.HasPrefix(name, "mandate_") {
			continue
		}
		// The largest legitimate family: ~45 route patterns x 10 methods x a few codes.
		if n := len(fam.GetMetric()); n > 600 {
			t.Errorf("%s has %d series after 400 hostile requests", name, n)
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(strings.ToLower(l.GetValue()), marker) {
					t.Errorf("%s: label %s=%q comes from a request", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
	if _, ok := fams["mandate_proxy_calls_total"]; !ok {
		t.Error("no proxy series at all: the test did not reach the proxy")
	}
}

// TestMetricsListen: with --metrics-listen, /metrics (with mandate_build_info) is served on that
// address only, starts with the server and stops with it.
func TestMetricsListen(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.MetricsListen = ln.Addr().String(), mln.Addr().String()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, mln) }()
	hc := &http.Client{}
	metricsURL := "http://" + mln.Addr().String()

	fams := scrape(t, hc, metricsURL)
	bi := buildinfo.Get()
	info := fams["mandate_build_info"]
	if info == nil || len(info.GetMetric()) != 1 || info.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Fatalf("mandate_build_info = %v", info)
	}
	labels := map[string]string{}
	for _, l := range info.GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != buildinfo.Version() || labels["revision"] != bi.Revision || labels["goversion"] != bi.GoVersion {
		t.Errorf("mandate_build_info labels %v, want %+v", labels, bi)
	}
	resp, err := hc.Get(cfg.Issuer + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics on the main listener: %d, want 404", resp.StatusCode)
	}
	for _, path := range []string{"/healthz", "/v1/openapi.json"} {
		if resp, err := hc.Get(metricsURL + path); err != nil || resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s on the metrics listener: %v %v, want 404 (only /metrics is served there)", path, resp.StatusCode, err)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if c, err := net.Dial("tcp", mln.Addr().String()); err == nil {
		c.Close()
		t.Error("the metrics listener still accepts connections after shutdown")
	}
}

// TestServeNeedsMetricsListener: Serve refuses a metrics listener that the settings do not name,
// and a --metrics-listen without one, instead of silently serving /metrics nowhere.
func TestServeNeedsMetricsListener(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.MetricsListen = "127.0.0.1:1"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := srv.Serve(t.Context(), ln, nil); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("Serve without the metrics listener = %v", err)
	}
}
