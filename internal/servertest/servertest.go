// Package servertest starts a real mandate server on a 127.0.0.1 listener for tests of other
// packages (the CLI, the interop client, end-to-end tests): the one place that knows how.
package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/principal"
	"github.com/mandate-dev/mandate/internal/server"
)

// Server is a running mandate.
type Server struct {
	URL  string // the issuer: http://127.0.0.1:port unless Options.Config set another
	Addr string // where it listens
	// MetricsAddr is where /metrics is served when Options.Config sets MetricsListen (give
	// 127.0.0.1:0 for a free port); "" otherwise.
	MetricsAddr string
	AdminToken  string // an API token of the bootstrap admin, made beside the bootstrap token
	// BootstrapToken is the token in <DataDir>/bootstrap-token, unused: it only logs in.
	BootstrapToken string
	DataDir        string
	Srv            *server.Server
}

// Options change what Start builds.
type Options struct {
	Config func(*config.Config) // edits the settings before Validate
	Now    func() time.Time     // the server's clock; nil = time.Now
	Log    io.Writer            // where the server logs; nil = nowhere (stderr with -v)
}

// Start runs a server until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.Listen = ln.Addr().String()
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		ln.Close()
		t.Fatal(err)
	}
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			ln.Close()
			t.Fatal(err)
		}
	}
	out := opts.Log
	if out == nil {
		out = io.Discard
		if testing.Verbose() {
			out = os.Stderr
		}
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, log, opts.Now)
	if err != nil {
		cancel()
		ln.Close()
		if metricsLn != nil {
			metricsLn.Close()
		}
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, metricsLn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
		srv.Close()
	})
	boot, err := os.ReadFile(filepath.Join(cfg.DataDir, server.BootstrapFile))
	if err != nil {
		t.Fatalf("read bootstrap token: %v", err)
	}
	// The bootstrap token works only for mandate login, once; tests of everything else act as
	// the admin with an ordinary token, made the way mandate tokens create makes one.
	admin, err := srv.Store().GetUser(ctx, principal.BootstrapUser)
	if err != nil {
		t.Fatal(err)
	}
	_, adminToken, err := principal.New(srv.Store(), opts.Now).CreateToken(ctx, "", admin, "", "servertest", 0)
	if err != nil {
		t.Fatal(err)
	}
	ts := &Server{URL: cfg.Issuer, Addr: ln.Addr().String(), AdminToken: adminToken, BootstrapToken: strings.TrimSpace(string(boot)),
		DataDir: cfg.DataDir, Srv: srv}
	if metricsLn != nil {
		ts.MetricsAddr = metricsLn.Addr().String()
	}
	return ts
}

// Admin calls the management API with the bootstrap admin's token and returns the status and
// body.
func (s *Server) Admin(t testing.TB, method, path string, in any) (int, string) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.AdminToken)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// AddUpstream configures a bearer upstream on a loopback address with one route, and its key.
func (s *Server) AddUpstream(t testing.TB, name, baseURL, scope, method, path, key string) {
	t.Helper()
	status, body := s.Admin(t, http.MethodPost, "/v1/upstreams", map[string]any{
		"name": name, "base_url": baseURL, "auth": "bearer", "allow_private": true,
		"routes": []map[string]any{{"scope": scope, "methods": []string{method}, "paths": []string{path}}},
	})
	if status != http.StatusCreated && status != http.StatusOK {
		t.Fatalf("POST /v1/upstreams %s: %d %s", name, status, body)
	}
	status, body = s.Admin(t, http.MethodPut, "/v1/upstreams/"+name+"/secrets/credential", map[string]string{"secret": key})
	if status/100 != 2 {
		t.Fatalf("PUT /v1/upstreams/%s/secrets/credential: %d %s", name, status, body)
	}
	if strings.Contains(body, key) {
		t.Errorf("setting the secret of %s answered with it: %s", name, body)
	}
}

// FreeAddr is a 127.0.0.1 address that nothing listens on (a port the kernel just gave and took
// back), for a server a test starts later, or a receiver that is down.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
