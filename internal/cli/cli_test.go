package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/mandate-dev/mandate/client"
	"github.com/mandate-dev/mandate/internal/api"
	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// testServer is a real mandate on a real 127.0.0.1 listener, with the CLI's config directory
// pointed at a temporary directory.
type testServer struct {
	URL        string
	DataDir    string
	ConfigDir  string
	AdminToken string // an API token of the bootstrap admin
	Srv        *server.Server
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	return newTestServerWith(t, servertest.Options{})
}

func newTestServerWith(t *testing.T, opts servertest.Options) *testServer {
	t.Helper()
	s := servertest.Start(t, opts)
	confDir := filepath.Join(t.TempDir(), "conf")
	t.Setenv(envConfigDir, confDir)
	t.Setenv(envToken, "")
	t.Setenv(envAgentKey, "")
	return &testServer{URL: s.URL, DataDir: s.DataDir, ConfigDir: confDir, AdminToken: s.AdminToken, Srv: s.Srv}
}

// mandate runs the command tree with args and stdin, returning what it printed.
func mandate(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	root := NewRoot(&buf, &buf)
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return buf.String(), err
}

// ok runs a command that must succeed and returns its output.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	out, err := mandate(t, "", args...)
	if err != nil {
		t.Fatalf("mandate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// fails runs a command that must fail with an error containing every one of want.
func fails(t *testing.T, stdin string, args []string, want ...string) string {
	t.Helper()
	out, err := mandate(t, stdin, args...)
	if err == nil {
		t.Fatalf("mandate %s succeeded, want an error containing %q\n%s", strings.Join(args, " "), want, out)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("mandate %s: error %q does not contain %q", strings.Join(args, " "), err, w)
		}
	}
	return err.Error()
}

func hasAll(t *testing.T, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Fatalf("output does not contain %q:\n%s", w, got)
		}
	}
}

func decodeJSON(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestEndToEnd(t *testing.T) {
	ts := newTestServer(t)
	bootstrap := filepath.Join(ts.DataDir, server.BootstrapFile)

	// Not logged in yet: every management command says how to log in.
	fails(t, "", []string{"users", "list"}, "not logged in: run mandate login --server URL --token-file <data-dir>/bootstrap-token")

	// Login with the bootstrap token: it is exchanged for a named token, and its file removed.
	secret, err := os.ReadFile(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	out := ok(t, "login", "--server", ts.URL+"/", "--token-file", bootstrap)
	hasAll(t, out, "Logged in to "+ts.URL+" as admin (admin)", "The bootstrap token is used up; saved the new API token tok_")
	if m := fileMode(t, filepath.Join(ts.ConfigDir, loginFile)); m != 0o600 {
		t.Errorf("config.json mode %04o, want 0600", m)
	}
	if m := fileMode(t, ts.ConfigDir); m != 0o700 {
		t.Errorf("config dir mode %04o, want 0700", m)
	}
	if strings.Contains(out, strings.TrimSpace(string(secret))) {
		t.Error("login printed the token")
	}
	saved, err := loadLogin()
	if err != nil || saved == nil || saved.Token == strings.TrimSpace(string(secret)) || !strings.HasPrefix(saved.Token, "mnd_") {
		t.Fatalf("saved login %+v, %v: want a new API token, not the bootstrap token", saved, err)
	}
	if strings.Contains(out, saved.Token) {
		t.Error("login printed the new token")
	}
	// The token may come on stdin too.
	if out, err := mandate(t, saved.Token, "login", "--server", ts.URL, "--json"); err != nil {
		t.Fatalf("login from stdin: %v\n%s", err, out)
	} else {
		var res struct {
			Server string `json:"server"`
			User   struct {
				Name  string `json:"name"`
				Admin bool   `json:"admin"`
			} `json:"user"`
		}
		decodeJSON(t, out, &res)
		if res.Server != ts.URL || res.User.Name != "admin" || !res.User.Admin {
			t.Errorf("login --json = %+v", res)
		}
	}

	t.Run("users", func(t *testing.T) {
		hasAll(t, ok(t, "users", "create", "alice"), "Created user alice (usr_")
		ok(t, "users", "create", "root2", "--admin")
		hasAll(t, ok(t, "users", "list"), "alice", "root2", "ADMIN")
		var res struct {
			Users []api.UserJSON `json:"users"`
		}
		decodeJSON(t, ok(t, "users", "list", "--json"), &res)
		if len(res.Users) != 3 {
			t.Errorf("users list --json: %d users, want 3", len(res.Users))
		}
		fails(t, "", []string{"users", "create", "alice"}, "a user named \"alice\" exists (conflict, request ")
		var carol api.UserJSON
		decodeJSON(t, ok(t, "users", "create", "carol", "--may-grant-scope", "repo:read issues:read",
			"--may-grant-resource", "https://api.github.com/", "--json"), &carol)
		if carol.Grantable == nil || len(carol.Grantable.Scopes) != 2 || carol.Grantable.Resources[0] != "https://api.github.com/" {
			t.Errorf("users create --may-grant-*: grantable = %+v", carol.Grantable)
		}
	})

	t.Run("tokens", func(t *testing.T) {
		out := ok(t, "tokens", "create", "--user", "alice", "--name", "laptop", "--ttl", "168h")
		hasAll(t, out, "mnd_", "shown only once", "laptop")
		var tok api.TokenJSON
		decodeJSON(t, ok(t, "tokens", "create", "--user", "alice", "--json"), &tok)
		if tok.ID == "" || !strings.HasPrefix(tok.Token, "mnd_") || tok.ExpiresAt == nil {
			t.Fatalf("tokens create --json = %+v", tok)
		}
		list := ok(t, "tokens", "list", "--user", "alice")
		hasAll(t, list, tok.ID, "laptop", "active")
		if strings.Contains(list, tok.Token) {
			t.Error("tokens list printed a secret")
		}
		// The new token logs alice in (into another config dir, to keep the admin's login).
		t.Setenv(envConfigDir, t.TempDir())
		hasAll(t, ok(t, "login", "--server", ts.URL, "--token", tok.Token), "as alice\n")
		fails(t, "", []string{"users", "list"}, "only an admin can list users (forbidden, request ")
		t.Setenv(envConfigDir, ts.ConfigDir)

		hasAll(t, ok(t, "tokens", "revoke", tok.ID), "Revoked API token "+tok.ID)
		hasAll(t, ok(t, "tokens", "list", "--user", "alice"), "revoked")
		fails(t, "", []string{"login", "--server", ts.URL, "--token", tok.Token},
			"the server refused this token: it is unknown, revoked or expired (unauthenticated, request ")
		// A token given in the environment is used instead of the saved login.
		t.Setenv(envToken, tok.Token)
		fails(t, "", []string{"users", "list"}, "(unauthenticated, request ")
		t.Setenv(envToken, "")
		// The saved token is never sent to another server.
		fails(t, "", []string{"users", "list", "--server", "http://127.0.0.1:1"}, "you are logged in to "+ts.URL)
	})

	keyFile := filepath.Join(ts.ConfigDir, "agent", "key.jwk")
	var did string
	t.Run("agent init", func(t *testing.T) {
		var res struct {
			KeyFile string `json:"key_file"`
			DID     string `json:"did"`
		}
		decodeJSON(t, ok(t, "agent", "init", "--json"), &res)
		if res.KeyFile != keyFile || !strings.HasPrefix(res.DID, "did:key:z6Mk") {
			t.Fatalf("agent init --json = %+v", res)
		}
		did = res.DID
		if m := fileMode(t, keyFile); m != 0o600 {
			t.Errorf("key file mode %04o, want 0600", m)
		}
		fails(t, "", []string{"agent", "init"}, "already exists", "refusing to overwrite")
		// Before registration the agent commands say what to do.
		fails(t, "", []string{"agent", "token"}, "mandate agent register")
	})

	var claimCode, agentID string
	t.Run("agent register", func(t *testing.T) {
		fails(t, "", []string{"agent", "register", "--server", ts.URL, "--handle", "Bad Handle"}, "handle", "(invalid_request, request ")
		var reg struct {
			AgentID   string    `json:"agent_id"`
			Handle    string    `json:"handle"`
			DID       string    `json:"did"`
			Status    string    `json:"status"`
			ClaimCode string    `json:"claim_code"`
			Expires   time.Time `json:"claim_code_expires_at"`
		}
		decodeJSON(t, ok(t, "agent", "register", "--server", ts.URL, "--handle", "test-bot", "--name", "Test bot", "--json"), &reg)
		if !strings.HasPrefix(reg.AgentID, "agt_") || reg.Handle != "test-bot" || reg.DID != did || reg.Status != "UNCLAIMED" || reg.ClaimCode == "" || reg.Expires.Before(time.Now()) {
			t.Fatalf("agent register --json = %+v", reg)
		}
		claimCode, agentID = reg.ClaimCode, reg.AgentID
		statePath := filepath.Join(filepath.Dir(keyFile), agentStateFile)
		if m := fileMode(t, statePath); m != 0o600 {
			t.Errorf("agent.json mode %04o, want 0600", m)
		}
		st, err := loadAgentState(keyFile)
		if err != nil || st == nil || *st != (agentState{Server: ts.URL, AgentID: agentID, Handle: "test-bot", DID: did}) {
			t.Errorf("agent.json = %+v, %v", st, err)
		}
		fails(t, "", []string{"agent", "register", "--server", ts.URL, "--handle", "again"}, "already registered as @test-bot")
		// Unclaimed agents get no tokens, and are told why.
		fails(t, "", []string{"agent", "token"}, "mandate agents claim", "(unauthorized_client, request ")
	})

	t.Run("register shows the next step", func(t *testing.T) {
		kf := filepath.Join(t.TempDir(), "other", "key.jwk")
		hasAll(t, ok(t, "agent", "init", "--key-file", kf), "did:key:", "--key-file "+kf)
		out := ok(t, "agent", "register", "--server", ts.URL, "--handle", "other-bot", "--key-file", kf)
		hasAll(t, out, "claim code", "Ask the agent's owner to run: mandate agents claim ")
	})

	t.Run("agents claim", func(t *testing.T) {
		fails(t, "", []string{"agents", "claim", "AAAA-BBBB-CCCC-DDDD"}, "the claim code is invalid, expired or already used", "(invalid_request, request ")
		hasAll(t, ok(t, "agents", "claim", strings.ToLower(claimCode)), "Claimed agent @test-bot ("+agentID+")")
		fails(t, "", []string{"agents", "claim", claimCode}, "already used")
	})

	t.Run("agent claim-code", func(t *testing.T) {
		kf := filepath.Join(t.TempDir(), "third", "key.jwk")
		ok(t, "agent", "init", "--key-file", kf)
		fails(t, "", []string{"agent", "claim-code", "--key-file", kf}, "mandate agent register")
		var reg, again struct {
			AgentID   string `json:"agent_id"`
			ClaimCode string `json:"claim_code"`
		}
		decodeJSON(t, ok(t, "agent", "register", "--server", ts.URL, "--handle", "third-bot", "--key-file", kf, "--json"), &reg)
		decodeJSON(t, ok(t, "agent", "claim-code", "--key-file", kf, "--json"), &again)
		if again.AgentID != reg.AgentID || again.ClaimCode == "" || again.ClaimCode == reg.ClaimCode {
			t.Fatalf("agent claim-code --json = %+v after registration %+v", again, reg)
		}
		hasAll(t, ok(t, "agent", "claim-code", "--key-file", kf), "claim code", "@third-bot", "Ask the agent's owner to run: mandate agents claim ")
		// Each new code replaces the one before.
		fails(t, "", []string{"agents", "claim", reg.ClaimCode}, "the claim code is invalid, expired or already used")
		fails(t, "", []string{"agents", "claim", again.ClaimCode}, "the claim code is invalid, expired or already used")
		// A claimed agent gets no new code.
		fails(t, "", []string{"agent", "claim-code"}, "@test-bot is CLAIMED", "(conflict, request ")
	})

	t.Run("agents list and show", func(t *testing.T) {
		hasAll(t, ok(t, "agents", "list"), agentID, "@test-bot", "CLAIMED", "@other-bot", "UNCLAIMED")
		var res struct {
			Agents []api.AgentJSON `json:"agents"`
		}
		decodeJSON(t, ok(t, "agents", "list", "--status", "claimed", "--json"), &res)
		if len(res.Agents) != 1 || res.Agents[0].AgentID != agentID {
			t.Errorf("agents list --status claimed --json = %+v", res.Agents)
		}
		fails(t, "", []string{"agents", "list", "--status", "nope"}, "want UNCLAIMED, CLAIMED or REVOKED")
		hasAll(t, ok(t, "agents", "show", "@test-bot"), agentID, did, "CLAIMED", "keys:")
		var a api.AgentJSON
		decodeJSON(t, ok(t, "agents", "show", agentID, "--json"), &a)
		if a.Handle != "test-bot" || len(a.Keys) != 1 {
			t.Errorf("agents show --json = %+v", a)
		}
		fails(t, "", []string{"agents", "show", "@nobody"}, "no agent \"@nobody\"", "(not_found, request ")
	})

	var accessToken string
	t.Run("agent token and inspect", func(t *testing.T) {
		accessToken = strings.TrimSpace(ok(t, "agent", "token"))
		if strings.Count(accessToken, ".") != 2 {
			t.Fatalf("agent token printed %q", accessToken)
		}
		out := ok(t, "token", "inspect", accessToken)
		hasAll(t, out, "header:", "at+jwt", "claims:", agentID, "test-bot", "cnf", "signature: valid (kid ", "expires: in ", "valid: yes")
		if strings.Contains(out, accessToken) {
			t.Error("token inspect printed the token")
		}
		// From stdin, as JSON.
		o, err := mandate(t, accessToken+"\n", "token", "inspect", "-", "--json")
		if err != nil {
			t.Fatalf("token inspect -: %v\n%s", err, o)
		}
		var ins inspection
		decodeJSON(t, o, &ins)
		if !ins.Valid || !ins.Signature.Valid || ins.Claims["client_id"] != agentID || ins.Header["typ"] != "at+jwt" {
			t.Errorf("token inspect --json = %+v", ins)
		}
		// A tampered signature is refused, and says why.
		parts := strings.Split(accessToken, ".")
		sig := []byte(parts[2])
		sig[5] = 'A'
		if parts[2][5] == 'A' {
			sig[5] = 'B'
		}
		tampered := parts[0] + "." + parts[1] + "." + string(sig)
		fails(t, "", []string{"token", "inspect", tampered}, "the token is not valid", "signature")
		fails(t, "", []string{"token", "inspect", "not-a-token"}, "not a signed JWT")
		// Never fetch keys from a server the token names: with another --server, iss mismatches.
		fails(t, "", []string{"token", "inspect", accessToken, "--server", "http://127.0.0.1:1"}, "is mandate serve running at http://127.0.0.1:1")
	})

	t.Run("agent whoami", func(t *testing.T) {
		hasAll(t, ok(t, "agent", "whoami"), agentID, "@test-bot", did, "agent")
		var who agentCaller
		decodeJSON(t, ok(t, "agent", "whoami", "--json"), &who)
		if who.AgentID != agentID || who.DID != did || who.Handle != "test-bot" {
			t.Errorf("agent whoami --json = %+v", who)
		}
	})

	t.Run("agent rotate-key", func(t *testing.T) {
		var res struct {
			DID    string `json:"did"`
			OldDID string `json:"old_did"`
		}
		decodeJSON(t, ok(t, "agent", "rotate-key", "--json"), &res)
		if res.OldDID != did || res.DID == did || !strings.HasPrefix(res.DID, "did:key:") {
			t.Fatalf("agent rotate-key --json = %+v (old did %s)", res, did)
		}
		for _, p := range []string{keyFile + ".new", keyFile + ".old"} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s was left behind", p)
			}
		}
		if m := fileMode(t, keyFile); m != 0o600 {
			t.Errorf("key file mode %04o after rotation, want 0600", m)
		}
		st, err := loadAgentState(keyFile)
		if err != nil || st.DID != res.DID || st.AgentID != agentID {
			t.Errorf("agent.json after rotation = %+v, %v", st, err)
		}
		did = res.DID
		// The new key gets tokens, and the server sees the new key.
		hasAll(t, ok(t, "token", "inspect", strings.TrimSpace(ok(t, "agent", "token"))), "valid: yes")
		var who agentCaller
		decodeJSON(t, ok(t, "agent", "whoami", "--json"), &who)
		if who.AgentID != agentID || who.DID != did {
			t.Errorf("whoami after rotation = %+v, want did %s", who, did)
		}
		hasAll(t, ok(t, "agents", "show", "@test-bot"), did)
	})

	t.Run("keys", func(t *testing.T) {
		hasAll(t, ok(t, "keys", "list"), "KID", "signing", "EdDSA")
		hasAll(t, ok(t, "keys", "rotate"), "is published now and starts signing at ", "(in 10m)")
		out := ok(t, "keys", "list")
		hasAll(t, out, "signing", "published")
		var res struct {
			Keys []api.SigningKeyJSON `json:"keys"`
		}
		decodeJSON(t, ok(t, "keys", "list", "--json"), &res)
		if len(res.Keys) != 2 {
			t.Errorf("keys list --json: %d keys, want 2", len(res.Keys))
		}
	})

	t.Run("agents revoke", func(t *testing.T) {
		// No terminal and no --yes: refuse.
		fails(t, "y\n", []string{"agents", "revoke", "@test-bot"}, "pass --yes")
		// On a terminal, anything but y keeps the agent.
		isTerminal = func(io.Reader) bool { return true }
		t.Cleanup(func() { isTerminal = stdinIsTerminal })
		fails(t, "n\n", []string{"agents", "revoke", "@test-bot"}, "not revoked")
		hasAll(t, ok(t, "agents", "show", "@test-bot"), "CLAIMED")
		isTerminal = stdinIsTerminal

		hasAll(t, ok(t, "agents", "revoke", "@test-bot", "--yes"), "Revoked agent @test-bot ("+agentID+")")
		hasAll(t, ok(t, "agents", "show", "@test-bot"), "REVOKED")
		fails(t, "", []string{"agent", "token"}, "the agent is revoked and can get no tokens (invalid_client, request ")
		fails(t, "", []string{"agent", "whoami"}, "revoked")
	})

	t.Run("logout", func(t *testing.T) {
		hasAll(t, ok(t, "logout"), "Logged out of "+ts.URL)
		if _, err := os.Stat(filepath.Join(ts.ConfigDir, loginFile)); !os.IsNotExist(err) {
			t.Errorf("config.json still there: %v", err)
		}
		fails(t, "", []string{"agents", "list"}, "not logged in")
		hasAll(t, ok(t, "logout"), "Not logged in.")
	})
}

func TestServerUnreachable(t *testing.T) {
	t.Setenv(envConfigDir, t.TempDir())
	t.Setenv(envToken, "")
	// A port nobody listens on: take one and close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	fails(t, "", []string{"login", "--server", url, "--token", "mnd_x"},
		"cannot reach "+url, "is mandate serve running at "+url+"? start it with: mandate serve")
	kf := filepath.Join(t.TempDir(), "key.jwk")
	ok(t, "agent", "init", "--key-file", kf)
	fails(t, "", []string{"agent", "register", "--server", url, "--handle", "x-bot", "--key-file", kf}, "is mandate serve running at "+url)
	fails(t, "", []string{"login", "--server", "ftp://x"}, "want the server's URL")
	fails(t, "", []string{"login", "--server", url}, "no API token")
}

// newAgent makes, registers and claims an agent with its key in its own directory, and returns
// the key file.
func newAgent(t *testing.T, ts *testServer, handle string) string {
	t.Helper()
	kf := filepath.Join(t.TempDir(), handle, "key.jwk")
	ok(t, "agent", "init", "--key-file", kf)
	var reg struct {
		ClaimCode string `json:"claim_code"`
	}
	decodeJSON(t, ok(t, "agent", "register", "--server", ts.URL, "--handle", handle, "--key-file", kf, "--json"), &reg)
	ok(t, "agents", "claim", reg.ClaimCode)
	return kf
}

// background runs a command in another goroutine; its output and error arrive on the channel.
func background(t *testing.T, args ...string) <-chan [2]any {
	ch := make(chan [2]any, 1)
	go func() {
		out, err := mandate(t, "", args...)
		ch <- [2]any{out, err}
	}()
	return ch
}

// pendingRequest waits until a grant request is pending and returns its id.
func pendingRequest(t *testing.T) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		var res struct {
			Requests []api.GrantRequestJSON `json:"requests"`
		}
		decodeJSON(t, ok(t, "grant", "requests", "--json"), &res)
		if len(res.Requests) > 0 {
			return res.Requests[0].RequestID
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no pending grant request appeared")
	return ""
}

func TestDelegationEndToEnd(t *testing.T) {
	ts := newTestServer(t)
	ok(t, "login", "--server", ts.URL, "--token-file", filepath.Join(ts.DataDir, server.BootstrapFile))
	orch := newAgent(t, ts, "orchestrator")
	res := newAgent(t, ts, "researcher")
	ctx := context.Background()

	detailsFile := filepath.Join(t.TempDir(), "details.json")
	if err := os.WriteFile(detailsFile, []byte(`[{"type":"repo","repos":["acme/*"],"actions":["read","write"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	var grant api.GrantJSON
	t.Run("grant create, list, show", func(t *testing.T) {
		fails(t, "", []string{"grant", "create", "--agent", "@orchestrator", "--scope", "repo:read", "--resource", "https://api.example.com/", "--expires", "2x"}, "--expires", "30d")
		fails(t, "", []string{"grant", "create", "--agent", "@orchestrator", "--scope", "repo:read"}, "resource", "(invalid_request, request ")
		// The --help example of old, enforced by nothing: refused by the CLI itself, before any
		// call (the server named is not there), naming the keys that work.
		fails(t, "", []string{"grant", "create", "--server", "http://127.0.0.1:1", "--agent", "@orchestrator", "--scope", "repo:read",
			"--resource", "https://api.example.com/", "--budget", "requests=500"},
			`--budget: budget "requests" is not a budget mandate knows: use calls, calls:UPSTREAM, task_calls, task_calls:UPSTREAM, max_request_bytes`)
		// A value is plain digits, as in the API's and the token endpoint's JSON; refused before any call.
		for _, tc := range []struct{ budget, want string }{
			{"calls=+3", `--budget: budget "calls" is +3: want a whole number >= 0 in plain digits (no sign, leading zero, fraction or exponent)`},
			{"calls=03", `budget "calls" is 03`},
			{"calls=2.0", `budget "calls" is 2.0`},
			{"calls = 3", `--budget "calls = 3": want key=N without spaces`},
		} {
			fails(t, "", []string{"grant", "create", "--server", "http://127.0.0.1:1", "--agent", "@orchestrator", "--scope", "repo:read",
				"--resource", "https://api.example.com/", "--budget", tc.budget}, tc.want)
		}
		// The server knows the upstreams: a typo is refused, not left unlimited behind a shown limit.
		fails(t, "", []string{"grant", "create", "--agent", "@orchestrator", "--scope", "repo:read", "--resource", "https://api.example.com/",
			"--budget", "calls:ubaer=3"}, `budget "calls:ubaer" names upstream "ubaer", which does not exist: known upstreams are none yet`)
		decodeJSON(t, ok(t, "grant", "create", "--agent", "@orchestrator", "--scope", "repo:read repo:write", "--scope", "issues:read",
			"--resource", "https://api.example.com/", "--resource", "https://other.example/", "--details", detailsFile,
			"--max-task-ttl", "1h", "--max-token-ttl", "5m", "--max-depth", "2", "--allow-subdelegation", "--budget", "calls=100,task_calls=10",
			"--expires", "30d", "--json"), &grant)
		if !strings.HasPrefix(grant.GrantID, "gr_") || len(grant.Scopes) != 3 || grant.MaxTaskTTL != 3600 || grant.MaxTokenTTL != 300 ||
			grant.MaxDepth != 2 || !grant.AllowSubdelegation || grant.Budget["calls"] != 100 || grant.Budget["task_calls"] != 10 || len(grant.AuthorizationDetails) != 1 {
			t.Fatalf("grant create --json = %+v", grant)
		}
		if d := time.Until(grant.ExpiresAt); d < 29*24*time.Hour || d > 30*24*time.Hour {
			t.Errorf("expires in %v, want 30d", d)
		}
		out := ok(t, "grant", "create", "--agent", "@researcher", "--scope", "issues:read", "--resource", "https://api.example.com/", "--expires", "1d12h")
		hasAll(t, out, "Granted gr_", "to @researcher", "issues:read", "max task ttl", "1h", "mandate task start --grant gr_")
		hasAll(t, ok(t, "grant", "list", "--agent", "@orchestrator"), grant.GrantID, "repo:read repo:write issues:read", "active")
		if strings.Contains(ok(t, "grant", "list", "--agent", "@orchestrator"), "@researcher") {
			t.Error("grant list --agent shows another agent's grant")
		}
		hasAll(t, ok(t, "grant", "show", grant.GrantID), grant.GrantID, "https://other.example/", `"acme/*"`, "sub-delegation", "yes", "calls=100 (0 used, 100 left), task_calls=10")
		fails(t, "", []string{"grant", "show", "gr_nope"}, "(not_found, request ")
	})

	t.Run("agent grants", func(t *testing.T) {
		out := ok(t, "agent", "grants", "--key-file", orch)
		hasAll(t, out, grant.GrantID, "repo:read", "1h", "yes")
		raw := ok(t, "agent", "grants", "--key-file", orch, "--json")
		if strings.Contains(raw, "grant_token") {
			t.Error("agent grants --json printed a grant token")
		}
		var res struct {
			Grants []agentGrant `json:"grants"`
		}
		decodeJSON(t, raw, &res)
		if len(res.Grants) != 1 || res.Grants[0].GrantID != grant.GrantID {
			t.Errorf("agent grants --json = %+v", res)
		}
	})

	var plain, instance taskStarted
	var file taskFile
	taskFilePath := filepath.Join(t.TempDir(), "run", "task.json")
	t.Run("task start", func(t *testing.T) {
		out := ok(t, "task", "start", "--key-file", orch, "--grant", grant.GrantID, "--purpose", "triage the backlog", "--ttl", "15m", "--scope", "repo:read")
		hasAll(t, out, "tsk_", "the key of @orchestrator", "token expires", "task ends")
		if strings.Count(out, ".") >= 2 && strings.Contains(out, "eyJ") {
			t.Error("task start printed the token without --print-token")
		}
		decodeJSON(t, ok(t, "task", "start", "--key-file", orch, "--grant", grant.GrantID, "--purpose", "plain", "--print-token", "--json"), &plain)
		if !strings.HasPrefix(plain.TaskID, "tsk_") || plain.InstanceKey || strings.Count(plain.AccessToken, ".") != 2 || plain.Scope != "repo:read repo:write issues:read" {
			t.Fatalf("task start --json = %+v", plain)
		}
		if d := time.Until(plain.TaskExpiresAt); d < 59*time.Minute || d > time.Hour {
			t.Errorf("task ends in %v, want the grant's 1h", d)
		}
		fails(t, "", []string{"task", "start", "--key-file", orch, "--grant", grant.GrantID, "--instance-key"}, "--instance-key needs --out")
		fails(t, "", []string{"task", "start", "--key-file", orch, "--grant", grant.GrantID, "--ttl", "2h"}, "task_ttl", "(invalid_request, request ")
		fails(t, "", []string{"task", "start", "--key-file", orch, "--grant", grant.GrantID, "--scope", "admin"}, "(invalid_scope, request ")
		fails(t, "", []string{"task", "start", "--key-file", res, "--grant", grant.GrantID}, "is not among the active grants of @researcher")

		decodeJSON(t, ok(t, "task", "start", "--key-file", orch, "--grant", grant.GrantID, "--purpose", "one run", "--instance-key",
			"--out", taskFilePath, "--json"), &instance)
		if !instance.InstanceKey || instance.Out != taskFilePath || instance.AccessToken != "" {
			t.Fatalf("task start --instance-key --json = %+v", instance)
		}
		if m := fileMode(t, taskFilePath); m != 0o600 {
			t.Errorf("task file mode %04o, want 0600", m)
		}
		data, err := os.ReadFile(taskFilePath)
		if err != nil {
			t.Fatal(err)
		}
		decodeJSON(t, string(data), &file)
		if file.TaskID != instance.TaskID || file.JKT != instance.JKT || len(file.Key) == 0 || file.Issuer != ts.URL || file.TokenType != "DPoP" {
			t.Fatalf("task file = %+v", file)
		}
		// An existing --out file is kept (it holds that task's instance key) unless --force.
		fails(t, "", []string{"task", "start", "--key-file", orch, "--grant", grant.GrantID, "--instance-key", "--out", taskFilePath},
			"--out "+taskFilePath+" exists: refusing to overwrite it", "--force")
		if again, _ := os.ReadFile(taskFilePath); !bytes.Equal(again, data) {
			t.Fatal("a refused task start changed the --out file")
		}
		var forced taskStarted
		decodeJSON(t, ok(t, "task", "start", "--key-file", orch, "--grant", grant.GrantID, "--instance-key", "--out", taskFilePath, "--force", "--json"), &forced)
		if again, _ := os.ReadFile(taskFilePath); bytes.Equal(again, data) || forced.TaskID == instance.TaskID {
			t.Fatal("task start --force did not replace the --out file")
		}
		if err := os.WriteFile(taskFilePath, data, 0o600); err != nil { // the first task's file again, as the test goes on
			t.Fatal(err)
		}
		// --out - prints the file, and nothing else, on standard output.
		var buf, errBuf bytes.Buffer
		root := NewRoot(&buf, &errBuf)
		root.SetArgs([]string{"task", "start", "--key-file", orch, "--grant", grant.GrantID, "--instance-key", "--out", "-"})
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("task start --out -: %v\n%s", err, errBuf.String())
		}
		var viaStdout taskFile
		decodeJSON(t, buf.String(), &viaStdout)
		if viaStdout.AccessToken == "" || len(viaStdout.Key) == 0 {
			t.Errorf("task start --out - printed %s", buf.String())
		}
		hasAll(t, errBuf.String(), viaStdout.TaskID, "instance key")
	})

	t.Run("token inspect draws the chain", func(t *testing.T) {
		out := ok(t, "token", "inspect", plain.AccessToken, "--server", ts.URL)
		hasAll(t, out, "delegation: usr_", " → @orchestrator ("+plain.TaskID+")\n", "grant: "+grant.GrantID, "authorization details:", `"acme/*"`, "valid: yes")

		out = ok(t, "token", "inspect", file.AccessToken, "--server", ts.URL)
		hasAll(t, out, " → @orchestrator ("+file.TaskID+", instance "+file.JKT[:8]+"…)\n")

		// The orchestrator's instance hands a narrower task to the researcher (client SDK).
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(file.Key); err != nil {
			t.Fatal(err)
		}
		task, err := client.ResumeTask(ts.URL, nil, file.AccessToken, jwk.Key.(ed25519.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		resKey, err := client.LoadKey(res)
		if err != nil {
			t.Fatal(err)
		}
		act, err := client.NewActorToken(resKey, ts.URL)
		if err != nil {
			t.Fatal(err)
		}
		child, err := task.Delegate(ctx, act, client.TaskRequest{Purpose: "read the issues", Scopes: []string{"repo:read"},
			Resources: []string{"https://api.example.com/"}})
		if err != nil {
			t.Fatal(err)
		}
		out = ok(t, "token", "inspect", child.AccessToken, "--server", ts.URL)
		hasAll(t, out, " → @orchestrator ("+file.TaskID+", instance "+file.JKT[:8]+"…) → @researcher ("+child.TaskID+")\n")
		var ins inspection
		decodeJSON(t, ok(t, "token", "inspect", child.AccessToken, "--server", ts.URL, "--json"), &ins)
		if len(ins.Chain) != 2 || ins.Chain[0].Handle != "orchestrator" || ins.Chain[0].InstanceJKT != file.JKT || ins.Chain[0].Task != file.TaskID ||
			ins.Chain[1].Handle != "researcher" || ins.Chain[1].Task != child.TaskID || ins.Chain[1].InstanceJKT != "" {
			t.Errorf("token inspect --json chain = %+v", ins.Chain)
		}

		hasAll(t, ok(t, "task", "list", "--grant", grant.GrantID), file.TaskID, child.TaskID, "one run", "read the issues")
		hasAll(t, ok(t, "task", "show", child.TaskID), "parent", file.TaskID, "depth", "2", "active")
		var shown api.TaskJSON
		decodeJSON(t, ok(t, "task", "show", file.TaskID, "--json"), &shown)
		if shown.InstanceJKT != file.JKT || shown.Purpose != "one run" {
			t.Errorf("task show --json = %+v", shown)
		}

		// Ending the instance's task as a person ends the researcher's too.
		hasAll(t, ok(t, "task", "end", file.TaskID), "Task "+file.TaskID+" is completed")
		var after api.TaskJSON
		decodeJSON(t, ok(t, "task", "show", child.TaskID, "--json"), &after)
		if after.Status != "completed" {
			t.Errorf("child task after its parent ended: %s", after.Status)
		}
		if err := task.Refresh(ctx); err == nil {
			t.Error("an ended task's token was refreshed")
		}
	})

	t.Run("task end as the agent, task revoke", func(t *testing.T) {
		t.Setenv(envConfigDir, t.TempDir()) // not logged in here
		hasAll(t, ok(t, "task", "end", plain.TaskID, "--key-file", orch), "Task "+plain.TaskID+" is completed (ended by @orchestrator)")
		fails(t, "", []string{"task", "end", plain.TaskID}, "not logged in")
		t.Setenv(envConfigDir, ts.ConfigDir)
		hasAll(t, ok(t, "task", "show", plain.TaskID), "completed")

		var x taskStarted
		decodeJSON(t, ok(t, "task", "start", "--key-file", orch, "--grant", grant.GrantID, "--json"), &x)
		fails(t, "", []string{"task", "revoke", x.TaskID}, "pass --yes")
		hasAll(t, ok(t, "task", "revoke", x.TaskID, "--yes"), "Revoked task "+x.TaskID)
		hasAll(t, ok(t, "task", "show", x.TaskID), "revoked")
	})

	t.Run("grant requests", func(t *testing.T) {
		var asked struct {
			RequestID string `json:"request_id"`
		}
		decodeJSON(t, ok(t, "agent", "request-grant", "--key-file", res, "--scope", "repo:read repo:write", "--resource", "https://api.example.com/",
			"--max-task-ttl", "30m", "--reason", "nightly dependency updates", "--json"), &asked)
		out := ok(t, "grant", "requests")
		hasAll(t, out, asked.RequestID, "pending", "repo:read repo:write", "nightly dependency updates")
		fails(t, "", []string{"grant", "approve", asked.RequestID, "--scope", "admin"}, "(invalid_request, request ")
		out = ok(t, "grant", "approve", asked.RequestID, "--scope", "repo:read", "--max-task-ttl", "15m")
		hasAll(t, out, "Approved "+asked.RequestID+": grant gr_", "repo:read", "15m")
		if strings.Contains(out, "repo:write") {
			t.Error("approval did not narrow the scopes")
		}
		hasAll(t, ok(t, "grant", "requests", "--status", "approved"), asked.RequestID, "approved")
		fails(t, "", []string{"grant", "deny", asked.RequestID}, "already answered")

		// --wait picks up the approval.
		done := background(t, "agent", "request-grant", "--key-file", res, "--scope", "issues:read", "--resource", "https://api.example.com/", "--wait")
		id := pendingRequest(t)
		var g api.GrantJSON
		decodeJSON(t, ok(t, "grant", "approve", id, "--json"), &g)
		r := <-done
		if err, _ := r[1].(error); err != nil {
			t.Fatalf("request-grant --wait: %v\n%s", err, r[0])
		}
		hasAll(t, r[0].(string), "Waiting for the owner of @researcher", g.GrantID+"\n")
		hasAll(t, ok(t, "agent", "grants", "--key-file", res), g.GrantID)

		// … and a denial.
		done = background(t, "agent", "request-grant", "--key-file", res, "--scope", "issues:read", "--resource", "https://api.example.com/", "--wait")
		id = pendingRequest(t)
		hasAll(t, ok(t, "grant", "deny", id), "Denied grant request "+id)
		r = <-done
		if err, _ := r[1].(error); err == nil || !strings.Contains(err.Error(), "the owner denied grant request "+id) {
			t.Fatalf("request-grant --wait after a denial: %v\n%s", r[1], r[0])
		}
	})

	t.Run("grant revoke", func(t *testing.T) {
		fails(t, "", []string{"grant", "revoke", grant.GrantID}, "pass --yes")
		hasAll(t, ok(t, "grant", "revoke", grant.GrantID, "--yes"), "Revoked grant "+grant.GrantID)
		hasAll(t, ok(t, "grant", "show", grant.GrantID), "revoked")
		fails(t, "", []string{"task", "start", "--key-file", orch, "--grant", grant.GrantID}, "not among the active grants of @orchestrator")
		hasAll(t, ok(t, "task", "list", "--grant", grant.GrantID), "revoked")
		fails(t, "", []string{"grant", "requests", "--status", "bogus"}, "want pending, approved, denied or all")
	})
}

// Two agents' key files in one directory would share the one agent.json beside them: the second
// key's commands must say so instead of acting as (or being refused as) the first agent.
func TestTwoKeysInOneDirectory(t *testing.T) {
	ts := newTestServer(t)
	dir := t.TempDir()
	k1, k2 := filepath.Join(dir, "k1.jwk"), filepath.Join(dir, "k2.jwk")
	ok(t, "agent", "init", "--key-file", k1)
	ok(t, "agent", "init", "--key-file", k2)
	ok(t, "agent", "register", "--key-file", k1, "--server", ts.URL, "--handle", "first-bot")
	for _, args := range [][]string{
		{"agent", "register", "--key-file", k2, "--server", ts.URL, "--handle", "second-bot"},
		{"agent", "whoami", "--key-file", k2},
		{"agent", "claim-code", "--key-file", k2},
		{"agent", "token", "--key-file", k2},
	} {
		fails(t, "", args, "records agent @first-bot with key did:key:", "but "+k2+" is key did:key:", "keep each agent's key in a directory of its own")
	}
}
