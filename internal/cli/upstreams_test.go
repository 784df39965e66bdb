package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/server"
)

func TestParseRoute(t *testing.T) {
	r, err := parseRoute("ahrefs:read=get,HEAD /v3/site-explorer/* /v3/keywords/**")
	if err != nil {
		t.Fatal(err)
	}
	if r.Scope != "ahrefs:read" || strings.Join(r.Methods, ",") != "GET,HEAD" || strings.Join(r.Paths, " ") != "/v3/site-explorer/* /v3/keywords/**" {
		t.Errorf("parseRoute = %+v", r)
	}
	if r, err := parseRoute("x:all=* /**"); err != nil || r.Methods[0] != "*" {
		t.Errorf("parseRoute(*) = %+v, %v", r, err)
	}
	for bad, want := range map[string]string{
		"": "want 'SCOPE=METHOD PATH'", "ahrefs:read": "want", "ahrefs:read=GET": "want", "=GET /x": "want", "GET /x": "want",
		"ahrefs:read=GTE /v3/*":     `"GTE" is not a method`,
		"ahrefs:read=GET,,POST /v3": `"" is not a method`,
		"ahrefs:read=/v3/* GET":     `"/V3/*" is not a method`,
		"ahrefs:read=GET v3/*":      `path "v3/*": want a path starting with /`,
	} {
		if _, err := parseRoute(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseRoute(%q) = %v, want an error with %q", bad, err, want)
		}
	}
}

func TestParseAuth(t *testing.T) {
	for _, tc := range []struct{ auth, param, wantKind, wantParam string }{
		{"bearer", "", "bearer", ""},
		{"header:X-Api-Key", "", "header", "X-Api-Key"},
		{"header", "X-Api-Key", "header", "X-Api-Key"},
		{"query:api_key", "api_key", "query", "api_key"},
		{"oauth2-refresh", "", "oauth2-refresh", ""},
	} {
		k, p, err := parseAuth(tc.auth, tc.param)
		if err != nil || k != tc.wantKind || p != tc.wantParam {
			t.Errorf("parseAuth(%q, %q) = %q, %q, %v", tc.auth, tc.param, k, p, err)
		}
	}
	for _, bad := range [][2]string{{"header", ""}, {"query:", ""}, {"bearer:x", ""}, {"magic", ""}, {"header:A", "B"}} {
		if _, _, err := parseAuth(bad[0], bad[1]); err == nil {
			t.Errorf("parseAuth(%q, %q) succeeded", bad[0], bad[1])
		}
	}
}

func TestUpstreamCommands(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	const key = "sk_live_cli_canary_0123456789"
	var printed strings.Builder
	run := func(stdin string, args ...string) string {
		t.Helper()
		out, err := mandate(t, stdin, args...)
		if err != nil {
			t.Fatalf("mandate %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		printed.WriteString(out)
		return out
	}

	// The secret comes from stdin; nothing is added when it is missing.
	fails(t, "", []string{"upstream", "add", "ahrefs", "--base-url", "https://api.ahrefs.com", "--auth", "bearer"}, "no secret", "--secret-file")
	fails(t, "k", []string{"upstream", "add", "x", "--base-url", "https://x.example", "--auth", "header"}, "header:NAME")
	fails(t, "k", []string{"upstream", "add", "x", "--base-url", "https://x.example", "--auth", "bearer", "--route", "x:read"}, "SCOPE=METHOD PATH")
	fails(t, "k", []string{"upstream", "add", "x", "--base-url", "https://x.example", "--auth", "bearer", "--token-url", "https://a/t"}, "--token-url")
	fails(t, "k", []string{"upstream", "add", "x", "--base-url", "http://x.example", "--auth", "bearer"}, "allow_private", "invalid_request")
	out := run(key+"\n", "upstream", "add", "ahrefs", "--base-url", "https://api.ahrefs.com/", "--auth", "bearer",
		"--route", "ahrefs:read=GET /v3/site-explorer/*", "--route", "ahrefs:all=GET,POST /v3/**")
	hasAll(t, out, "Added upstream ahrefs (https://api.ahrefs.com, bearer) with 2 routes", "/proxy/ahrefs", "Stored its credential")

	// Routes from a file, with body rules; a header credential from a file.
	dir := t.TempDir()
	routes := filepath.Join(dir, "routes.json")
	os.WriteFile(routes, []byte(`{"routes": [{"scope": "resend:send", "methods": ["POST"], "paths": ["/emails"],
		"body": [{"detail": "recipient_domains", "pointer": "/to", "match": "email_domain"}]}]}`), 0o600)
	keyFile := filepath.Join(dir, "resend.key")
	os.WriteFile(keyFile, []byte(key+"-resend\r\n"), 0o600)
	var added api.UpstreamJSON
	decodeJSON(t, run("", "upstream", "add", "resend", "--base-url", "https://api.resend.com", "--auth", "header:X-Api-Key",
		"--routes-file", routes, "--secret-file", keyFile, "--json"), &added)
	if added.Param != "X-Api-Key" || len(added.Routes) != 1 || len(added.Routes[0].Body) != 1 || strings.Join(added.HasSecrets, ",") != "credential" {
		t.Errorf("add --json = %+v", added)
	}
	// An OAuth upstream without a secret yet.
	out = run("", "upstream", "add", "x", "--base-url", "http://127.0.0.1:9", "--auth", "oauth2-refresh", "--allow-private",
		"--token-url", "http://127.0.0.1:9/token", "--client-id", "cid", "--oauth-scope", "tweet.read users.read", "--no-secret")
	hasAll(t, out, "No secret stored yet")

	out = run("", "upstream", "list")
	hasAll(t, out, "NAME", "ahrefs", "https://api.ahrefs.com", "credential", "resend", "header:X-Api-Key", "x", "MISSING refresh_token")
	out = run("", "upstream", "show", "x")
	hasAll(t, out, "Token URL: http://127.0.0.1:9/token", "Client id: cid", "Scopes:    tweet.read users.read", "MISSING refresh_token", "Routes:    none")

	// set-secret picks the kind the upstream needs; --kind for another.
	out = run("rt-canary-0123456789\n", "upstream", "set-secret", "x")
	hasAll(t, out, "Stored the refresh token of x")
	run("cs-canary-0123456789", "upstream", "set-secret", "x", "--kind", "client_secret")
	fails(t, "v", []string{"upstream", "set-secret", "x", "--kind", "credential"}, "invalid_request")
	fails(t, "v", []string{"upstream", "set-secret", "nope"}, "not_found")
	out = run("", "upstream", "show", "x")
	hasAll(t, out, "Secrets:   client_secret,refresh_token")

	out = run("", "upstream", "routes", "ahrefs", "--route", "ahrefs:read=GET /v3/**")
	hasAll(t, out, "ahrefs:read", "/v3/**")
	if strings.Contains(out, "ahrefs:all") {
		t.Errorf("routes did not replace the old routes:\n%s", out)
	}
	// Removing destroys the secrets: it confirms like a revocation.
	fails(t, "y\n", []string{"upstream", "remove", "resend"}, "refusing to remove upstream resend", "pass --yes")
	isTerminal = func(io.Reader) bool { return true }
	t.Cleanup(func() { isTerminal = stdinIsTerminal })
	fails(t, "n\n", []string{"upstream", "remove", "resend"}, "not removed")
	run("", "upstream", "show", "resend")
	out = run("y\n", "upstream", "remove", "resend")
	hasAll(t, out, "Remove upstream resend (", "destroy its secrets", "Removed upstream resend")
	isTerminal = stdinIsTerminal
	run("", "upstream", "remove", "x", "--yes")
	fails(t, "", []string{"upstream", "show", "resend"}, "not_found")
	run("", "upstream", "list", "--json")
	run("", "upstream", "show", "ahrefs", "--json")

	for _, s := range []string{key, "rt-canary", "cs-canary"} {
		if strings.Contains(printed.String(), s) {
			t.Errorf("the CLI printed a secret (%s…)", s[:8])
		}
	}
}
