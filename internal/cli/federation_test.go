package cli

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-dev/mandate/internal/federation/oidctest"
	"github.com/mandate-dev/mandate/internal/server"
)

// TestFederationCommands: an admin sets up federation from the CLI, dry-runs a rule on a good and
// a bad token, and finds the exact reason of a refused exchange with mandate audit --request-id.
func TestFederationCommands(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	is := oidctest.New(t)

	hasAll(t, ok(t, "service-accounts", "create", "ci-deploy", "--description", "deploys acme/app"), "Created service account ci-deploy (svc_")
	hasAll(t, ok(t, "service-accounts", "list"), "ci-deploy", "deploys acme/app")
	hasAll(t, ok(t, "federation", "issuers", "add", "--issuer", is.URL, "--max-assertion-lifetime", "30m"),
		"Trusted "+is.URL+" (keys from OIDC discovery; assertions live at most 30m0s)")

	// A rule that would match every repository of a shared issuer is refused on save.
	jwks := filepath.Join(t.TempDir(), "gh.jwks")
	if err := os.WriteFile(jwks, is.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, "federation", "issuers", "add", "--issuer", "https://token.actions.githubusercontent.com", "--jwks-file", jwks)
	fails(t, "", []string{"federation", "rules", "add", "--issuer", "https://token.actions.githubusercontent.com",
		"--audience", "https://mandate.example.com", "--condition", `claims.ref == "refs/heads/main"`,
		"--service-account", "ci-deploy", "--scope", "deploy:write"}, "tenant")
	fails(t, "", []string{"federation", "rules", "add", "--issuer", is.URL, "--audience", "a", "--condition", "true",
		"--service-account", "ci-deploy", "--scope", "deploy:write"}, "does not depend on the assertion")

	out := ok(t, "federation", "rules", "add", "--issuer", is.URL, "--audience", "https://mandate.example.com",
		"--subject-prefix", "repo:acme/app:", "--claim", "ref=refs/heads/main",
		"--condition", `claims.workflow_ref.startsWith("acme/app/.github/workflows/deploy.yml@")`,
		"--service-account", "ci-deploy", "--scope", "deploy:write", "--token-ttl", "10m")
	hasAll(t, out, "Added rule fr_")
	rule := strings.Fields(strings.TrimPrefix(out, "Added rule "))[0]
	rule = strings.TrimSuffix(rule, ":")
	hasAll(t, ok(t, "federation", "rules", "show", rule), "Subject prefix:  repo:acme/app:", "Claim:           ref = refs/heads/main", "deploy.yml@")

	// The dry run: every check with pass or fail; a refusal exits non-zero.
	good := filepath.Join(t.TempDir(), "good.jwt")
	os.WriteFile(good, []byte(is.Mint(is.GitHubActions("https://mandate.example.com", "acme/app", ""))+"\n"), 0o600)
	hasAll(t, ok(t, "federation", "test", "--rule", rule, "--token", good), "pass  signature", "pass  audience", "The token matches rule "+rule)
	bad := is.Mint(is.GitHubActions("https://mandate.example.com", "acme/other", ""))
	out, err := mandate(t, bad, "federation", "test", "--rule", rule, "--token", "-")
	if err == nil {
		t.Fatalf("federation test of another repository's token succeeded:\n%s", out)
	}
	hasAll(t, out, "pass  signature", "FAIL  subject", "repo:acme/other", "would be refused")

	// A refused exchange names a request id; the audit trail has the precise reason.
	resp, err := http.PostForm(ts.URL+"/oauth/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {bad}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rid := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != 400 || rid == "" {
		t.Fatalf("exchange of a bad token: %d, request id %q", resp.StatusCode, rid)
	}
	hasAll(t, ok(t, "audit", "--request-id", rid), "token.deny", "assertion_subject", "repo:acme/other")

	hasAll(t, ok(t, "federation", "rules", "disable", rule), "Disabled rule "+rule)
	hasAll(t, ok(t, "service-accounts", "disable", "ci-deploy"), "Disabled service account ci-deploy")
	hasAll(t, ok(t, "federation", "issuers", "list"), is.URL, "discovery", "https://token.actions.githubusercontent.com", "pinned")

	// Removing an issuer deletes its rules: it confirms like a revocation.
	fails(t, "y\n", []string{"federation", "issuers", "remove", is.URL}, "refusing to remove issuer "+is.URL, "pass --yes")
	isTerminal = func(io.Reader) bool { return true }
	t.Cleanup(func() { isTerminal = stdinIsTerminal })
	out, err = mandate(t, "n\n", "federation", "issuers", "remove", is.URL)
	if err == nil || !strings.Contains(err.Error(), "not removed") || !strings.Contains(out, "Stop trusting "+is.URL+" and delete its 1 rules?") {
		t.Fatalf("issuers remove answered n: %v\n%s", err, out)
	}
	hasAll(t, ok(t, "federation", "issuers", "list"), is.URL)
	hasAll(t, func() string { out, _ := mandate(t, "y\n", "federation", "issuers", "remove", is.URL); return out }(), "Removed "+is.URL)
	isTerminal = stdinIsTerminal
	hasAll(t, ok(t, "federation", "issuers", "remove", "https://token.actions.githubusercontent.com", "--yes"), "Removed")
	if out := ok(t, "federation", "issuers", "list"); strings.Contains(out, is.URL) {
		t.Errorf("the issuer is still trusted:\n%s", out)
	}
}
