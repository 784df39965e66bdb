package cli

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

const bootstrapSpent = "the bootstrap token was already used (or expired); ask an admin for a token: mandate tokens create"

// readBootstrap returns the bootstrap token file's path and the token in it.
func readBootstrap(t *testing.T, ts *testServer) (string, string) {
	t.Helper()
	path := filepath.Join(ts.DataDir, server.BootstrapFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, strings.TrimSpace(string(b))
}

func wantGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want it removed", path, err)
	}
}

// TestLoginSpendsBootstrapToken: mandate login exchanges the bootstrap token for a named API token
// of the admin (listed, revocable) and saves that; the server removes the file; a second login
// with the same token, kept elsewhere, is refused with what to do instead.
func TestLoginSpendsBootstrapToken(t *testing.T) {
	ts := newTestServer(t)
	path, secret := readBootstrap(t, ts)
	kept := filepath.Join(t.TempDir(), server.BootstrapFile)
	if err := os.WriteFile(kept, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var res struct {
		User    api.UserJSON `json:"user"`
		TokenID string       `json:"token_id"`
	}
	decodeJSON(t, ok(t, "login", "--server", ts.URL, "--token-file", path, "--json"), &res)
	if !res.User.Admin || !strings.HasPrefix(res.TokenID, "tok_") {
		t.Fatalf("login --json = %+v", res)
	}
	wantGone(t, path)
	host, _ := os.Hostname()
	var list struct {
		Tokens []api.TokenJSON `json:"tokens"`
	}
	decodeJSON(t, ok(t, "tokens", "list", "--json"), &list)
	var named, bootstrap *api.TokenJSON
	for i, tok := range list.Tokens {
		switch {
		case tok.ID == res.TokenID:
			named = &list.Tokens[i]
		case tok.Bootstrap:
			bootstrap = &list.Tokens[i]
		}
	}
	if named == nil || !strings.HasPrefix(named.Name, "login "+host+" ") || named.RevokedAt != nil || named.Bootstrap {
		t.Errorf("the login's token in tokens list: %+v", named)
	}
	if bootstrap == nil || bootstrap.RevokedAt == nil {
		t.Errorf("the bootstrap token in tokens list: %+v, want it revoked", bootstrap)
	}

	// The same token again, from a copy or on stdin: refused, saying what to do.
	fails(t, "", []string{"login", "--server", ts.URL, "--token-file", kept}, bootstrapSpent)
	fails(t, secret, []string{"login", "--server", ts.URL}, bootstrapSpent)
	t.Setenv(envToken, secret)
	fails(t, "", []string{"users", "list"}, bootstrapSpent)
	t.Setenv(envToken, "")
	// The removed file: the CLI says why it is gone.
	fails(t, "", []string{"login", "--server", ts.URL, "--token-file", path}, "does not exist", "ask an admin for a token: mandate tokens create")

	// The saved token is the admin's, and revocable like any other.
	hasAll(t, ok(t, "users", "list"), "admin")
	ok(t, "tokens", "revoke", res.TokenID)
	fails(t, "", []string{"users", "list"}, "the API token is unknown, revoked or expired")
}

// TestBootstrapTokenOnlyLogsIn: before login, the bootstrap token is no admin credential: the
// management API refuses it and says to log in with it, which still works afterwards.
func TestBootstrapTokenOnlyLogsIn(t *testing.T) {
	ts := newTestServer(t)
	path, secret := readBootstrap(t, ts)
	t.Setenv(envToken, secret)
	fails(t, "", []string{"users", "list", "--server", ts.URL}, "this is the one-time bootstrap token: it only logs in; run mandate login")
	fails(t, "", []string{"tokens", "create", "--server", ts.URL, "--name", "sneaky"}, "only logs in")
	t.Setenv(envToken, "")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("a refused use removed the unused bootstrap file: %v", err)
	}
	hasAll(t, ok(t, "login", "--server", ts.URL, "--token-file", path), "as admin (admin)")
	wantGone(t, path)
}

// TestBootstrapTokenExpires: unused, the bootstrap token works for 24 h after the first start;
// then login is refused with what to do, and the file is removed.
func TestBootstrapTokenExpires(t *testing.T) {
	for _, tt := range []struct {
		after time.Duration
		works bool
	}{{23*time.Hour + 59*time.Minute, true}, {24 * time.Hour, false}, {30 * 24 * time.Hour, false}} {
		t.Run(tt.after.String(), func(t *testing.T) {
			clock := &testClock{}
			ts := newTestServerWith(t, servertest.Options{Now: clock.Now})
			path, _ := readBootstrap(t, ts)
			clock.advance(tt.after)
			args := []string{"login", "--server", ts.URL, "--token-file", path}
			if tt.works {
				ok(t, args...)
			} else {
				fails(t, "", args, bootstrapSpent)
			}
			wantGone(t, path)
		})
	}
}
