package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
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

// dataDirServer runs servers one after another on one data directory, as restarts do.
type dataDirServer struct {
	t     *testing.T
	dir   string
	clock *clock
	log   io.Writer // where the servers log; nil = nowhere
}

// start runs a server on the data directory until stop is called.
func (d *dataDirServer) start() (srv *server.Server, url string, stop func()) {
	t := d.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir, cfg.Listen = d.dir, ln.Addr().String()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := d.log
	if log == nil {
		log = io.Discard
	}
	srv, err = server.New(ctx, cfg, slog.New(slog.NewTextHandler(log, nil)), d.clock.Now)
	if err != nil {
		cancel()
		ln.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, nil) }()
	return srv, cfg.Issuer, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		srv.Close()
	}
}

func (d *dataDirServer) bootstrapFile() string { return filepath.Join(d.dir, server.BootstrapFile) }

// login is POST /v1/login with token, as mandate login sends it.
func login(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/login", strings.NewReader(`{"name":"login test-host 2026-12-03"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func fileGone(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, fs.ErrNotExist)
}

// adminTokens lists the bootstrap admin's API tokens.
func adminTokens(t *testing.T, srv *server.Server) []principal.APIToken {
	t.Helper()
	admin, err := srv.Store().GetUser(t.Context(), principal.BootstrapUser)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := srv.Store().ListAPITokens(t.Context(), admin.ID)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// TestBootstrapNotResurrectedByRestart: a restart keeps an unused bootstrap token and its file; once
// login has used it, the file is gone and no restart writes it again or makes another token.
func TestBootstrapNotResurrectedByRestart(t *testing.T) {
	d := &dataDirServer{t: t, dir: filepath.Join(t.TempDir(), "data"), clock: &clock{}}
	srv, _, stop := d.start()
	if srv.BootstrapPath != d.bootstrapFile() {
		t.Fatalf("first start: BootstrapPath %q", srv.BootstrapPath)
	}
	secret := readToken(t, d.bootstrapFile())
	stop()

	srv, url, stop := d.start()
	if srv.BootstrapPath != "" || readToken(t, d.bootstrapFile()) != secret {
		t.Fatalf("a restart before login changed the bootstrap token (path %q)", srv.BootstrapPath)
	}
	code, out := login(t, url, secret)
	if code != http.StatusCreated || out["token"] == nil {
		t.Fatalf("login: %d %v", code, out)
	}
	if !fileGone(d.bootstrapFile()) {
		t.Error("the bootstrap file is still there after login")
	}
	stop()

	for range 2 {
		srv, url, stop = d.start()
		if srv.BootstrapPath != "" || !fileGone(d.bootstrapFile()) {
			t.Errorf("a restart after login wrote a bootstrap file (path %q)", srv.BootstrapPath)
		}
		if toks := adminTokens(t, srv); len(toks) != 2 {
			t.Errorf("admin tokens after restart: %+v, want the used bootstrap token and the login's", toks)
		}
		code, out = login(t, url, secret)
		if code != http.StatusUnauthorized || !strings.Contains(out["error_description"].(string), "the bootstrap token was already used (or expired); ask an admin for a token: mandate tokens create") {
			t.Errorf("login with the used token after restart: %d %v", code, out)
		}
		stop()
	}
}

// TestBootstrapExpiresAcrossRestart: a server started more than 24 h after the first start
// removes the unused, expired bootstrap token's file, and login with it is refused.
func TestBootstrapExpiresAcrossRestart(t *testing.T) {
	d := &dataDirServer{t: t, dir: filepath.Join(t.TempDir(), "data"), clock: &clock{}}
	_, _, stop := d.start()
	secret := readToken(t, d.bootstrapFile())
	stop()
	d.clock.Advance(principal.BootstrapTTL + time.Second)
	srv, url, stop := d.start()
	defer stop()
	if srv.BootstrapPath != "" || !fileGone(d.bootstrapFile()) {
		t.Errorf("the expired bootstrap file survived the restart (path %q)", srv.BootstrapPath)
	}
	if code, out := login(t, url, secret); code != http.StatusUnauthorized || out["error"] != "unauthenticated" ||
		!strings.Contains(out["error_description"].(string), "already used (or expired)") {
		t.Errorf("login with the expired token: %d %v", code, out)
	}
}

// TestBootstrapTokenRefusedEverywhereButLogin: the bootstrap token is no credential of the
// management API: every operation that the OpenAPI document says takes an API token refuses it
// (the management API saying how to use it), and it still logs in afterwards.
func TestBootstrapTokenRefusedEverywhereButLogin(t *testing.T) {
	ts := newTestServer(t)
	secret := readToken(t, filepath.Join(ts.DataDir, server.BootstrapFile))
	resp, err := ts.HC.Get(ts.URL + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			var op struct {
				Security []map[string][]string `json:"security"`
			}
			if method == "parameters" || json.Unmarshal(raw, &op) != nil {
				continue
			}
			takesAPIToken := false
			for _, s := range op.Security {
				_, ok := s["apiToken"]
				takesAPIToken = takesAPIToken || ok
			}
			if !takesAPIToken || path == "/v1/login" {
				continue
			}
			u := ts.URL + strings.NewReplacer("{", "", "}", "").Replace(path)
			body, ctype := "{}", "application/json"
			if strings.HasPrefix(path, "/oauth/") {
				body, ctype = "token=x", "application/x-www-form-urlencoded"
			}
			req, _ := http.NewRequest(strings.ToUpper(method), u, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+secret)
			req.Header.Set("Content-Type", ctype)
			resp, out := ts.do(t, req)
			desc, _ := out["error_description"].(string)
			// The OAuth endpoints answer every refused client alike (invalid_client).
			if resp.StatusCode != http.StatusUnauthorized || (!strings.HasPrefix(path, "/oauth/") && !strings.Contains(desc, "only logs in")) {
				t.Errorf("%s %s with the bootstrap token: %d %v", method, path, resp.StatusCode, out)
			}
			tried++
		}
	}
	if tried < 20 {
		t.Fatalf("only %d operations take an API token in the OpenAPI document", tried)
	}
	if code, out := login(t, ts.URL, secret); code != http.StatusCreated {
		t.Errorf("login after the refusals: %d %v", code, out)
	}
}
