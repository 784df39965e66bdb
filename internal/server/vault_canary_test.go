package server_test

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/syncbuf"

	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/config"
	"github.com/mandate-dev/mandate/internal/pgtest"
	"github.com/mandate-dev/mandate/internal/servertest"
)

func newCanary(t *testing.T) string {
	t.Helper()
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "canary-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// canaryForms are the ways a secret could leak: as it is, and base64 or hex encoded (the
// Basic header, a bytea column, a debug dump).
func canaryForms(c string) map[string][]byte {
	b := []byte(c)
	return map[string][]byte{
		"raw":           b,
		"base64":        []byte(base64.StdEncoding.EncodeToString(b)),
		"base64url":     []byte(base64.RawURLEncoding.EncodeToString(b)),
		"hex":           []byte(hex.EncodeToString(b)),
		"HEX":           []byte(strings.ToUpper(hex.EncodeToString(b))),
		"base64 (tail)": []byte(base64.StdEncoding.EncodeToString(b[1:])),
		"base64 (2)":    []byte(base64.StdEncoding.EncodeToString(b[2:])),
	}
}

// leakCheck collects what must not hold a canary.
type leakCheck struct {
	t        *testing.T
	canaries []string
}

func (lc *leakCheck) check(where string, data []byte) {
	lc.t.Helper()
	for _, c := range lc.canaries {
		for form, needle := range canaryForms(c) {
			if len(needle) > 12 {
				needle = needle[:len(needle)-2] // base64 of a suffix differs in its last characters
			}
			if bytes.Contains(data, needle) {
				lc.t.Errorf("%s holds a canary secret (%s form)", where, form)
			}
		}
	}
}

// checkDir reads every file under dir.
func (lc *leakCheck) checkDir(dir string) int {
	lc.t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		lc.check("data directory file "+filepath.Base(path), b)
		return nil
	})
	if err != nil {
		lc.t.Fatalf("read data directory: %v", err)
	}
	return n
}

// TestVaultCanary is invariant 5 ("secrets stay home"): canary secrets set through the API, and
// the access and rotated refresh tokens the vault obtains with them, appear nowhere in the data
// directory, the database, the server's log, API responses or audit events, in any encoding.
func TestVaultCanary(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testVaultCanary(t, "") })
	t.Run("postgres", func(t *testing.T) {
		pgtest.BaseURL(t)
		testVaultCanary(t, pgtest.URL(t))
	})
}

func testVaultCanary(t *testing.T, database string) {
	credential, refresh, clientSecret := newCanary(t), newCanary(t), newCanary(t)
	accessToken, rotated := newCanary(t), newCanary(t)
	lc := &leakCheck{t: t, canaries: []string{credential, refresh, clientSecret, accessToken, rotated}}

	// The upstream's token endpoint: accepts the canary refresh token and client secret, and
	// answers with a canary access token and a rotated (canary) refresh token.
	var tokenCalls int
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenCalls++
		if r.FormValue("refresh_token") != refresh || r.FormValue("client_secret") != clientSecret {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": accessToken, "token_type": "bearer", "expires_in": 3600, "refresh_token": rotated})
	}))
	defer tokenSrv.Close()

	logs := &syncbuf.Buffer{}
	s := servertest.Start(t, servertest.Options{Log: logs, Config: func(c *config.Config) { c.Database = database }})
	ts := &testServer{URL: s.URL, Admin: s.AdminToken, Srv: s.Srv, Clock: &clock{}, HC: &http.Client{Timeout: 10 * time.Second}}

	var responses bytes.Buffer
	call := func(method, path, contentType string, body []byte, want int) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+ts.Admin)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := ts.HC.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(&responses, "%s %s -> %d %v\n%s\n", method, path, resp.StatusCode, resp.Header, raw)
		if resp.StatusCode != want {
			t.Errorf("%s %s = %d %s, want %d", method, path, resp.StatusCode, raw, want)
		}
		return raw
	}
	jsonBody := func(v any) []byte {
		b, _ := json.Marshal(v)
		return b
	}

	call("POST", "/v1/upstreams", "application/json", jsonBody(map[string]any{
		"name": "canary", "base_url": "https://api.canary.example/v1", "auth": "bearer",
		"routes": []map[string]any{{"scope": "canary:read", "methods": []string{"GET"}, "paths": []string{"/items/*"}}},
	}), 201)
	call("POST", "/v1/upstreams", "application/json", jsonBody(map[string]any{
		"name": "oauth", "base_url": "https://api.oauth.example", "auth": "oauth2-refresh", "allow_private": true,
		"oauth2": map[string]any{"token_url": tokenSrv.URL + "/token", "client_id": "mandate-test-client"},
	}), 201)
	// Secrets, both ways the API takes them.
	call("PUT", "/v1/upstreams/canary/secrets/credential", "application/octet-stream", []byte(credential), 204)
	call("PUT", "/v1/upstreams/oauth/secrets/refresh_token", "application/json", jsonBody(map[string]string{"secret": refresh}), 204)
	call("PUT", "/v1/upstreams/oauth/secrets/client_secret", "application/json; charset=utf-8", jsonBody(map[string]string{"secret": clientSecret}), 204)
	// Refusals must not echo what they refuse.
	call("PUT", "/v1/upstreams/canary/secrets/credential", "application/octet-stream", []byte(credential+"\n"), 400)
	call("PUT", "/v1/upstreams/canary/secrets/refresh_token", "application/octet-stream", []byte(credential), 400)
	call("PUT", "/v1/upstreams/nope/secrets/credential", "application/octet-stream", []byte(credential), 404)
	call("PUT", "/v1/upstreams/canary/secrets/credential", "text/plain", []byte(credential), 415)
	call("PUT", "/v1/upstreams/canary/secrets/credential", "application/json", []byte(`{"secret": "`+credential+`", "x": 1}`), 400)
	call("PUT", "/v1/upstreams/canary/secrets/credential", "application/json", []byte(`{"secret": `+credential+`}`), 400)
	call("POST", "/v1/upstreams", "application/json", []byte(`{"name": "`+credential+`"}`), 400)

	// What the API shows: which secrets are set, never a value.
	var shown struct {
		HasSecrets []string `json:"has_secrets"`
		Routes     []any    `json:"routes"`
	}
	json.Unmarshal(call("GET", "/v1/upstreams/canary", "", nil, 200), &shown)
	if fmt.Sprint(shown.HasSecrets) != "[credential]" {
		t.Errorf("has_secrets = %v, want [credential]", shown.HasSecrets)
	}
	call("GET", "/v1/upstreams", "", nil, 200)
	call("PUT", "/v1/upstreams/canary/routes", "application/json", jsonBody(map[string]any{
		"routes": []map[string]any{{"scope": "canary:all", "methods": []string{"*"}, "paths": []string{"/**"}}},
	}), 200)

	// The secrets work: the vault injects them (the proxy's path), and refreshes the OAuth
	// upstream's token with the canary refresh token, storing the rotated one.
	ctx := t.Context()
	v := ts.Srv.Vault()
	for name, want := range map[string]string{"canary": "Bearer " + credential, "oauth": "Bearer " + accessToken} {
		u, err := v.Upstream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("GET", u.BaseURL+"/items/1", nil)
		if err := v.Inject(ctx, u, req); err != nil {
			t.Fatalf("Inject(%s): %v", name, err)
		}
		if got := req.Header.Get("Authorization"); got != want {
			t.Errorf("Inject(%s) set a wrong credential", name)
		}
	}
	if tokenCalls != 1 {
		t.Errorf("token endpoint called %d times, want 1", tokenCalls)
	}
	json.Unmarshal(call("GET", "/v1/upstreams/oauth", "", nil, 200), &shown)
	if fmt.Sprint(shown.HasSecrets) != "[access_token client_secret refresh_token]" {
		t.Errorf("oauth has_secrets = %v", shown.HasSecrets)
	}
	call("DELETE", "/v1/upstreams/oauth", "", nil, 204)

	// The audit trail records every change, without a secret.
	evs, err := ts.Srv.Store().ListEvents(ctx, audit.Filter{Limit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, ev := range evs {
		actions[ev.Action+"/"+string(ev.Outcome)]++
	}
	for _, a := range []string{"upstream.create/success", "upstream.secret_set/success", "upstream.update/success",
		"upstream.token_refresh/success", "upstream.delete/success"} {
		if actions[a] == 0 {
			t.Errorf("no %s audit event; have %v", a, actions)
		}
	}
	evJSON, _ := json.Marshal(evs)
	lc.check("audit events", evJSON)
	lc.check("API responses", responses.Bytes())

	// Everything the server stored: every file of the data directory (the SQLite database and
	// its WAL while the server runs), and on PostgreSQL every row of every table.
	if n := lc.checkDir(s.DataDir); n < 2 {
		t.Errorf("read %d files in the data directory, want the key and the database at least", n)
	}
	if database != "" {
		lc.check("PostgreSQL dump", dumpPostgres(t, database))
	}
	// Stopped, so the WAL is checkpointed into the database file: read it again.
	ts.Srv.Close()
	lc.checkDir(s.DataDir)
	lc.check("server log", logs.Bytes())
	if len(logs.Bytes()) == 0 {
		t.Error("the server logged nothing: the log capture is broken")
	}
}

// dumpPostgres reads every row of every table of the test's schema as JSON, as pg_dump would
// see the data (bytea as hex).
func dumpPostgres(t *testing.T, dsn string) []byte {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := t.Context()
	rows, err := db.QueryContext(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if len(tables) < 10 {
		t.Fatalf("found %d tables in the test schema: %v", len(tables), tables)
	}
	var dump bytes.Buffer
	sawSecrets := false
	for _, table := range tables {
		rows, err := db.QueryContext(ctx, `SELECT row_to_json(t)::text FROM "`+table+`" t`)
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		for rows.Next() {
			var row string
			if err := rows.Scan(&row); err != nil {
				t.Fatal(err)
			}
			dump.WriteString(table + ": " + row + "\n")
			sawSecrets = sawSecrets || table == "upstream_secrets"
		}
		rows.Close()
	}
	if !sawSecrets || !bytes.Contains(dump.Bytes(), []byte("canary:all")) {
		t.Error("the dump lacks the upstream's secret row or routes: it does not read what was stored")
	}
	return dump.Bytes()
}
