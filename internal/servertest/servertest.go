// Package servertest starts a real mandate server on a 127.0.0.1 listener for tests of other
// packages (the CLI, the interop client, end-to-end tests): the one place that knows how.
package servertest

import (
	"context"
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
