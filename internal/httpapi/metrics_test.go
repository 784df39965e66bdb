package httpapi

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMethodAndCodeLabels(t *testing.T) {
	methods := map[string]string{
		"GET": "GET", "HEAD": "HEAD", "POST": "POST", "PUT": "PUT", "PATCH": "PATCH", "DELETE": "DELETE",
		"CONNECT": "CONNECT", "OPTIONS": "OPTIONS", "TRACE": "TRACE",
		"get": "OTHER", "PROPFIND": "OTHER", "X": "OTHER", "": "OTHER", strings.Repeat("A", 5000): "OTHER",
	}
	for in, want := range methods {
		if got := MethodLabel(in); got != want {
			t.Errorf("MethodLabel(%.20q) = %q, want %q", in, got, want)
		}
	}
	codes := map[int]string{0: "200", 200: "200", 404: "404", 418: "418", 599: "5xx", 299: "2xx", 999: "9xx", 1000: "other", -1: "other", 42: "other"}
	for in, want := range codes {
		if got := CodeLabel(in); got != want {
			t.Errorf("CodeLabel(%d) = %q, want %q", in, got, want)
		}
	}
}

// TestMetricsSeriesBounded states the promise of the request metrics: whatever methods, paths
// and status codes clients cause, the number of series stays within the product of the route
// patterns, the known methods (+OTHER) and the codes, and no label carries what the client sent.
func TestMetricsSeriesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mux := http.NewServeMux()
	// /status/{code} answers with any code an upstream might send through the proxy.
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 100 || code > 999 {
			code = 400
		}
		w.WriteHeader(code)
	})
	mux.HandleFunc("GET /fixed", func(w http.ResponseWriter, r *http.Request) {})
	srv := httptest.NewServer(Middleware(log, NewMetrics(reg), mux))
	defer srv.Close()

	rng := rand.New(rand.NewPCG(1, 2))
	const marker = "zq"
	randomToken := func() string { return fmt.Sprintf("%s%x", marker, rng.Uint64()) }
	for i := 0; i < 300; i++ {
		method := []string{"GET", "POST", "PATCH", strings.ToUpper(randomToken()), randomToken()}[rng.IntN(5)]
		path := []string{"/fixed", "/" + randomToken(), "/status/" + strconv.Itoa(100+rng.IntN(900)), "/status/" + randomToken()}[rng.IntN(4)]
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		resp.Body.Close()
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// Routes: the two patterns, "unmatched", and the mux's own 405/404 answers (no pattern).
	// Codes: at most every registered code plus the ten classes.
	const routes, methods, codes = 4, 10, 70
	for _, f := range families {
		max := routes * methods * codes
		if f.GetName() == "mandate_http_request_duration_seconds" {
			max = routes * methods
		}
		if n := len(f.GetMetric()); n > max {
			t.Errorf("%s has %d series, want at most %d", f.GetName(), n, max)
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(strings.ToLower(l.GetValue()), marker) {
					t.Errorf("%s: label %s=%q comes from the request", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}
