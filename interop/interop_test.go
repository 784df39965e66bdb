// Package interop checks mandate against independent clients: Node's oauth4webapi and jose run
// agent.mjs against an in-process server, so the standards are honoured as others read them, not
// only as our own Go client does. See the comment at the top of agent.mjs for what is proven.
//
// Needs node (20 or later) and the pinned npm packages: npm ci --prefix interop.
package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/internal/server"
	"github.com/mandate-dev/mandate/internal/servertest"
)

// result is the JSON line agent.mjs prints.
type result struct {
	OK       bool   `json:"ok"`
	Issuer   string `json:"issuer"`
	AgentID  string `json:"agent_id"`
	Handle   string `json:"handle"`
	DID      string `json:"did"`
	DPoPJKT  string `json:"dpop_jkt"`
	TokenTyp string `json:"token_type"`
	Token    struct {
		Alg      string          `json:"alg"`
		Typ      string          `json:"typ"`
		Iss      string          `json:"iss"`
		Sub      string          `json:"sub"`
		Aud      json.RawMessage `json:"aud"`
		ClientID string          `json:"client_id"`
		Scope    string          `json:"scope"`
		JTI      string          `json:"jti"`
		CnfJKT   string          `json:"cnf_jkt"`
		Handle   string          `json:"handle"`
		DID      string          `json:"did"`
	} `json:"token"`
	NonceRetries struct {
		Token    int `json:"token"`
		Resource int `json:"resource"`
	} `json:"nonce_retries"`
	Checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	} `json:"checks"`
}

// wantChecks are the checks agent.mjs must report, so a run that stops early cannot pass.
var wantChecks = []string{
	"discovery", "discovery_dpop_algs", "discovery_auth_method", "register", "claim",
	"agent_key_thumbprint", "register_alg_Ed25519", "token_private_key_jwt_alg_Ed25519",
	"dpop_nonce_challenge", "dpop_nonce_header", "token_response", "access_token_jwt", "access_token_cnf_jkt",
	"resource_dpop", "resource_bearer_refused", "resource_proof_replay_refused",
	"introspection_active", "revocation", "introspection_inactive_after_revocation",
	"resource_refuses_revoked",
}

func TestNodeInterop(t *testing.T) {
	inCI := os.Getenv("CI") != ""
	node, err := exec.LookPath("node")
	if err != nil {
		if inCI {
			t.Fatal("node is not on PATH; the interop test needs Node.js 20 or later")
		}
		t.Skip("node is not on PATH: install Node.js 20 or later to run the oauth4webapi interop test")
	}
	if _, err := os.Stat(filepath.Join("node_modules", "oauth4webapi")); err != nil {
		if inCI {
			t.Fatal("run npm ci in interop/ (done by .ci/run)")
		}
		t.Skip("interop/node_modules is missing: run npm ci --prefix interop (from the repository root) to run the oauth4webapi interop test")
	}

	srv, issuer, adminToken, logs := startServer(t)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "agent.mjs")
	cmd.Env = append(os.Environ(), "ISSUER="+issuer, "ADMIN_TOKEN="+adminToken)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent.mjs stderr:\n%s", stderr.String())
			t.Logf("server log:\n%s", logs.String())
		}
	})
	if ctx.Err() != nil {
		t.Fatalf("agent.mjs did not finish within the timeout: %v", ctx.Err())
	}
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		t.Fatalf("run node agent.mjs: %v", runErr)
	}

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var res result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("agent.mjs printed no JSON result line (exit %v): %v\nstdout: %s\nstderr: %s", runErr, err, stdout.String(), stderr.String())
	}
	t.Logf("agent.mjs result: %s", lines[len(lines)-1])

	// Every check, by name: a failed one is an interop bug in the server (or in this test).
	seen := map[string]bool{}
	for _, c := range res.Checks {
		seen[c.Name] = true
		if !c.OK {
			t.Errorf("interop check %s failed: %s", c.Name, c.Detail)
		}
	}
	for _, name := range wantChecks {
		if !seen[name] {
			t.Errorf("agent.mjs did not report check %s (it stopped early)", name)
		}
	}
	if runErr != nil || !res.OK {
		t.Errorf("agent.mjs exited with %v, ok=%v; want exit 0, ok=true", runErr, res.OK)
	}
	if res.AgentID == "" {
		t.Fatal("agent.mjs reported no agent id")
	}

	// What the client saw, cross-checked against what we issued.
	if res.Issuer != issuer || res.Token.Iss != issuer {
		t.Errorf("issuer: client used %q, token iss %q; want %q", res.Issuer, res.Token.Iss, issuer)
	}
	if res.Token.ClientID != res.AgentID || res.Token.Sub != res.AgentID {
		t.Errorf("token client_id %q, sub %q; want both %q", res.Token.ClientID, res.Token.Sub, res.AgentID)
	}
	if res.Token.CnfJKT == "" || res.Token.CnfJKT != res.DPoPJKT {
		t.Errorf("token cnf.jkt %q; want the DPoP key thumbprint %q", res.Token.CnfJKT, res.DPoPJKT)
	}
	if res.Token.Typ != "at+jwt" || res.Token.Scope != "agent" || res.TokenTyp != "dpop" {
		t.Errorf("token typ %q scope %q token_type %q; want at+jwt, agent, dpop", res.Token.Typ, res.Token.Scope, res.TokenTyp)
	}
	if res.Token.Handle != res.Handle || res.Token.DID != res.DID {
		t.Errorf("token handle %q did %q; want %q %q", res.Token.Handle, res.Token.DID, res.Handle, res.DID)
	}

	// The server's own view: the agent the client registered is CLAIMED, with the client's
	// did:key (computed in JavaScript) as its key.
	req, _ := http.NewRequest(http.MethodGet, issuer+"/v1/agents/"+res.AgentID, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /v1/agents/%s: %v", res.AgentID, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var agent struct {
		AgentID, Handle, DID, Status string
		Keys                         []struct{ DID string }
	}
	if err := json.Unmarshal(body, &agent); resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/agents/%s: %d %s", res.AgentID, resp.StatusCode, body)
	}
	if agent.Status != "CLAIMED" || agent.Handle != res.Handle || agent.DID != res.DID {
		t.Errorf("server has agent %s as status %s handle %q did %q; want CLAIMED %q %q",
			agent.AgentID, agent.Status, agent.Handle, agent.DID, res.Handle, res.DID)
	}

	// The revocation the client sent through oauth4webapi is recorded.
	if res.Token.JTI != "" {
		revoked, err := srv.Store().IsTokenRevoked(context.Background(), res.Token.JTI)
		if err != nil || !revoked {
			t.Errorf("token %s revoked by the client: store says revoked=%v err=%v", res.Token.JTI, revoked, err)
		}
	}
}

// startServer runs an in-process mandate on a loopback port until the test ends.
func startServer(t *testing.T) (*server.Server, string, string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	s := servertest.Start(t, servertest.Options{Log: logs})
	return s.Srv, s.URL, s.AdminToken, logs
}

// syncBuffer collects the server log; handlers write it from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
